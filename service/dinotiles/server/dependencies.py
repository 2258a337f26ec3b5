"""Dependencies the cluster routes share: strict query parameters, bbox, tile size, caching headers."""

from __future__ import annotations

import hashlib
from typing import Annotated, Any

from fastapi import Query
from fastapi.exceptions import RequestValidationError
from starlette.requests import Request

from dinotiles.core.colors import Style, parse_colormap, parse_highlight
from dinotiles.core.groups import MAX_GROUPS, MIN_GROUPS
from dinotiles.core.limits import parse_bbox


def _query_names(dependant: Any, seen: set[int] | None = None) -> set[str]:
    seen = seen if seen is not None else set()
    if id(dependant) in seen:
        return set()
    seen.add(id(dependant))
    names = {p.alias for p in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub, seen)
    return names


def reject_unknown_query(request: Request) -> None:
    """Query parameters a route does not read are refused (422 naming them), never silently ignored.

    A TiTiler user passing ``colormap_name`` or ``rescale`` to a cluster tile would otherwise get
    a tile that looks fine and ignores what was asked.
    """
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    known = getattr(route, "_dinotiles_query_names", None)
    if known is None:
        known = _query_names(dependant)
        route._dinotiles_query_names = known  # type: ignore[union-attr]
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        raise RequestValidationError(
            [
                {
                    "loc": ("query", name),
                    "msg": f"unsupported query parameter {name!r} (this route reads: {', '.join(sorted(known))})",
                    "type": "unsupported",
                }
                for name in unknown
            ]
        )


MAX_ZOOM = 30  # deeper than any TileMatrixSet this server lists


def bounded_zooms(request: Request) -> None:
    """``minzoom``/``maxzoom`` overrides (TiTiler's tileset routes loop over them) must be real zooms.

    Unchecked, ``maxzoom=1000000000`` makes an inherited route build a billion tile matrices.
    """
    values = {}
    for name in ("minzoom", "maxzoom"):
        raw = request.query_params.get(name)
        if raw is None:
            continue
        if not raw.lstrip("-").isdigit() or not 0 <= int(raw) <= MAX_ZOOM:
            raise RequestValidationError(
                [{"loc": ("query", name), "msg": f"{name} must be an integer 0..{MAX_ZOOM}", "type": "zoom"}]
            )
        values[name] = int(raw)
    if values.get("minzoom", 0) > values.get("maxzoom", MAX_ZOOM):
        raise RequestValidationError([{"loc": ("query", "minzoom"), "msg": "minzoom > maxzoom", "type": "zoom"}])


def bbox_query(
    bbox: Annotated[str, Query(description="minx,miny,maxx,maxy in EPSG:4326 (minx > maxx crosses ±180°)")],
) -> tuple[float, float, float, float]:
    return parse_bbox(bbox)


def etag_for(*parts: object) -> str:
    """A strong ETag from what a response depends on (bundle, source version, tile, options)."""
    return '"' + hashlib.sha1("|".join(map(str, parts)).encode()).hexdigest()[:32] + '"'


def not_modified(request: Request, etag: str) -> bool:
    wanted = request.headers.get("if-none-match", "")
    return any(tag.strip() in (etag, f"W/{etag}") for tag in wanted.split(","))  # not "*": that says nothing


def style_params(
    groups: Annotated[
        int | None,
        Query(ge=MIN_GROUPS, le=MAX_GROUPS, description="speak of N super-clusters (the codebook's hierarchy cut)"),
    ] = None,
    colormap: Annotated[
        str | None, Query(description='your own colours, JSON {"id": [r, g, b] or [r, g, b, a]} (others transparent)')
    ] = None,
    highlight: Annotated[
        str | None, Query(description="comma-separated cluster (or group) ids shown in full colour, the rest dimmed")
    ] = None,
) -> Style:
    """What the picture (and npy/tif IDs, point, statistics, legend) should speak of."""
    return Style(groups=groups, colormap=parse_colormap(colormap), highlight=parse_highlight(highlight))
