"""ClusterTilerFactory: TiTiler's TilerFactory with ``reader=ClusterReader``.

It keeps TiTiler's conventions (``/tiles/{tileMatrixSetId}/{z}/{x}/{y}[.{format}]`` with a
``tilesize`` query parameter, ``/{tileMatrixSetId}/tilejson.json``, ``/WMTSCapabilities.xml``,
``/{tileMatrixSetId}/map.html``, ``/point``, ``/info``) and inherits its OGC API Tiles routes
(``/tiles``, ``/tiles/{tileMatrixSetId}``) unchanged; the routes whose answer is clusters rather
than pixels are its own. Every route refuses query parameters it does not read (422).
"""

from collections.abc import Callable
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

import numpy as np
from attrs import define, field
from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from titiler.core.errors import BadRequestError
from titiler.core.factory import TilerFactory
from titiler.core.models.mapbox import TileJSON

from dinotiles.core import timing
from dinotiles.core.colors import Style
from dinotiles.core.engine import ClusterEngine
from dinotiles.core.limits import deadline
from dinotiles.core.reader import WGS84, ClusterReader, cluster_reader
from dinotiles.core.sources import Source, resolve_source
from dinotiles.server.dependencies import (
    bbox_query,
    bounded_zooms,
    etag_for,
    not_modified,
    reject_unknown_query,
    style_params,
)
from dinotiles.server.formats import MEDIA, ClusterFormat, encode_tile
from dinotiles.server.ogc import map_page, wmts_capabilities
from dinotiles.server.settings import Settings

TILE_CACHE = "public, max-age=3600"
DOC_CACHE = "public, max-age=300"


class ClusterShare(BaseModel):
    cluster: int
    share: float
    count: int
    color: list[int]


class GroupShare(BaseModel):
    group: int
    share: float
    count: int
    color: list[int]
    clusters: list[int]


class Statistics(BaseModel):
    bbox: list[float]
    gsd_m: float
    patches: int
    valid_patches: int
    clusters: list[ClusterShare]
    groups: list[GroupShare] | None = None
    items: list[str] | None = None  # for a result collection: the items the counts come from


class ClusterPoint(BaseModel):
    """TiTiler's point answer (coordinates, values, band_names) plus the cluster and its colour."""

    coordinates: list[float]
    values: list[int | None]
    band_names: list[str]
    cluster: int | None
    group: int | None = None
    color: list[int] | None
    patch: dict[str, int]
    item: str | None = None  # for a result collection: the item the value comes from


class LegendEntry(BaseModel):
    cluster: int
    color: list[int]
    group: int | None = None


class LegendGroup(BaseModel):
    group: int
    color: list[int]
    clusters: list[int]


class Legend(BaseModel):
    k: int
    clusters: list[LegendEntry]
    groups: list[LegendGroup] | None = None
    highlight: list[int] = []


def cluster_shares(counts: np.ndarray, colors: np.ndarray) -> list[dict[str, Any]]:
    """Clusters present, largest share first, with their colours."""
    total = max(1, int(counts.sum()))
    return [
        {
            "cluster": int(c),
            "share": float(counts[c] / total),
            "count": int(counts[c]),
            "color": [int(v) for v in colors[c]],
        }
        for c in np.argsort(-counts, kind="stable")
        if counts[c] > 0
    ]


def group_shares(counts: np.ndarray, labels: np.ndarray, colors: np.ndarray) -> list[dict[str, Any]]:
    """Groups present, largest share first, with their colours and the member clusters present."""
    per_group = np.bincount(labels, weights=counts[: len(labels)], minlength=int(labels.max()) + 1)
    total = max(1.0, float(per_group.sum()))
    return [
        {
            "group": int(g),
            "share": float(per_group[g] / total),
            "count": int(per_group[g]),
            "color": [int(v) for v in colors[g][:3]],
            "clusters": [int(c) for c in np.flatnonzero((labels == g) & (counts[: len(labels)] > 0))],
        }
        for g in np.argsort(-per_group, kind="stable")
        if per_group[g] > 0
    ]


def _style_query(request: Request) -> str:
    """The style parameters of a request, for links to the legend that describes the same picture."""
    kept = [(k, v) for k, v in request.query_params.multi_items() if k in ("groups", "colormap", "highlight")]
    return "?" + urlencode(kept) if kept else ""


def passthrough_query(request: Request, drop: tuple[str, ...] = ()) -> str:
    """The request's own source parameters (url, assets…), minus the document's options."""
    dropped = {"tile_format", "tile_scale", "tilesize", "tilematrixsetid", "minzoom", "maxzoom", *drop}
    return urlencode([(k, v) for k, v in request.query_params.multi_items() if k.lower() not in dropped])


def check_tile_index(tms: Any, x: int, y: int, z: int) -> None:
    """z/x/y must exist in the TMS: 400 otherwise (TiTiler answers bad indexes with 4xx too)."""
    if not tms.minzoom <= z <= tms.maxzoom:
        raise BadRequestError(f"zoom {z} is outside {tms.id}'s zooms {tms.minzoom}..{tms.maxzoom}")
    matrix = tms.matrix(z)
    if x >= matrix.matrixWidth or y >= matrix.matrixHeight:
        raise BadRequestError(f"tile {x}/{y} is outside {tms.id} zoom {z} ({matrix.matrixWidth}x{matrix.matrixHeight})")


def strict_router() -> APIRouter:
    return APIRouter(dependencies=[Depends(reject_unknown_query), Depends(bounded_zooms)])


@define(kw_only=True)
class ClusterTilerFactory(TilerFactory):
    """Cluster tiles, TileJSON, WMTS, map, OGC tilesets, info, point, statistics and legend for one source kind."""

    engine: ClusterEngine
    settings: Settings
    # what `url=` (and friends) resolve to before reading: a checked Source. The URL guard lives
    # here, in the server's dependency, not in the reader; STAC items override it.
    path_dependency: Callable[..., Any] = field(default=None)
    router: APIRouter = field(factory=strict_router)
    attribution: Callable[[Source], str] = field(default=lambda src: "Clusters: dinotiles")

    def __attrs_post_init__(self) -> None:
        policy = self.settings.source_policy()
        self.reader = cluster_reader(self.engine, policy, self.settings.request_limits())
        if self.path_dependency is None:

            def guarded_source(
                url: Annotated[str, Query(description="COG: local path under a configured root, http(s) or s3 URL")],
            ) -> Source:
                return resolve_source(url, policy)

            self.path_dependency = guarded_source
        super().__attrs_post_init__()

    def open(self, src: str, tms_id: str = "WebMercatorQuad") -> ClusterReader:
        return self.cluster_reader(src, tms=self.supported_tms.get(tms_id))

    @property
    def cluster_reader(self) -> type[ClusterReader]:
        return self.reader  # type: ignore[return-value]  # set to a ClusterReader class in __attrs_post_init__

    def register_routes(self) -> None:
        self.tile()
        self.tilejson()
        self.wmts()
        self.map_viewer()
        self.tilesets()  # TiTiler's OGC API Tiles routes, fed by ClusterReader
        self.info()
        self.point()
        self.statistics()
        self.legend()

    def tile_max_age(self, src: str) -> int:
        """Seconds a CDN may keep a tile: a remote object is rechecked every DINOTILES_REVALIDATE_SECONDS."""
        remote = src.startswith(("http://", "https://", "s3://"))
        return min(3600, int(self.settings.revalidate_seconds)) if remote else 3600

    def _tms_literal(self) -> Any:
        return Literal[tuple(self.supported_tms.list())]

    # -- tiles ---------------------------------------------------------------------------
    def tile(self) -> None:  # type: ignore[override]
        tms_type = self._tms_literal()
        codebook = self.engine.bundle.codebook
        fingerprint = self.engine.fingerprint
        limit = self.settings.max_output_size
        tile_timeout = self.settings.tile_timeout

        def endpoint(
            request: Request,
            z: Annotated[int, Path(ge=0, le=30, description="zoom (TileMatrix identifier)")],
            x: Annotated[int, Path(ge=0, description="column")],
            y: Annotated[int, Path(ge=0, description="row")],
            tileMatrixSetId: Annotated[tms_type, Path(description="tiling scheme")],  # type: ignore[valid-type]
            src: Source = Depends(self.path_dependency),
            format: ClusterFormat = ClusterFormat.png,
            scale: int = 1,
            tilesize: Annotated[
                int | None, Query(ge=16, le=limit, description="tile size in pixels (default 256 × scale)")
            ] = None,
            style: Style = Depends(style_params),
        ) -> Response:
            """Cluster colours (png/webp, alpha 0 = no data) or uint16 IDs (npy/tif, 65535 = no data) of one tile."""
            style.check(codebook)
            tms = self.supported_tms.get(tileMatrixSetId)
            check_tile_index(tms, x, y, z)
            size = tilesize or 256 * scale
            headers = {"Cache-Control": f"public, max-age={self.tile_max_age(src)}"}
            with deadline(tile_timeout), timing.collect() as spans, self.open(src, tileMatrixSetId) as reader:
                # the identity the window cache uses (for sources without validators it needs the open file)
                headers["ETag"] = etag_for(fingerprint, reader.identity, tms.id, z, x, y, size, format.value, style.key)
                if not_modified(request, headers["ETag"]):
                    return Response(status_code=304, headers=headers)
                image = reader.tile(x, y, z, tilesize=size)
                with timing.span("render"):
                    body = encode_tile(image, format, codebook, style)
            headers["Server-Timing"] = timing.header(spans)
            headers["Content-Bbox"] = ",".join(map(str, image.bounds or ()))
            return Response(body, media_type=MEDIA[format.value], headers=headers)

        def with_format(format: Annotated[ClusterFormat, Path(description="png, webp, npy or tif")]) -> ClusterFormat:
            return format

        def with_scale(
            scale: Annotated[int, Path(ge=1, le=4, description="@Nx: N × 256 px (alias of tilesize)")],
        ) -> int:
            return scale

        base = "/tiles/{tileMatrixSetId}/{z}/{x}/{y}"
        # most specific first: `{y}` alone would also swallow "1@2x.png"
        variants: list[tuple[str, str, dict[str, Any]]] = [
            ("@{scale}x.{format}", "tile_scale_format", {"format": with_format, "scale": with_scale}),
            ("@{scale}x", "tile_scale", {"scale": with_scale}),
            (".{format}", "tile_format", {"format": with_format}),
            ("", "tile", {}),
        ]
        for suffix, name, path_deps in variants:
            self.router.add_api_route(
                base + suffix,
                _bind(endpoint, path_deps),
                methods=["GET"],
                name=name,
                operation_id=f"{self.operation_prefix}{name}",
                response_class=Response,
                responses={200: {"content": {m: {} for m in MEDIA.values()}}, 304: {"description": "not modified"}},
                summary="Cluster tile",
            )

    def tilejson(self) -> None:  # type: ignore[override]
        tms_type = self._tms_literal()

        @self.router.get(
            "/{tileMatrixSetId}/tilejson.json",
            response_model=TileJSON,
            response_model_exclude_none=True,
            operation_id=f"{self.operation_prefix}tilejson",
        )
        def tilejson(
            request: Request,
            response: Response,
            tileMatrixSetId: Annotated[tms_type, Path()],  # type: ignore[valid-type]
            src: Source = Depends(self.path_dependency),
            tile_format: ClusterFormat = ClusterFormat.png,
            tile_scale: Annotated[int, Query(ge=1, le=4)] = 1,
            tilesize: Annotated[int | None, Query(ge=16, le=self.settings.max_output_size)] = None,
            style: Style = Depends(style_params),
        ) -> dict[str, Any]:
            """TileJSON 3.0 of the cluster layer: bounds, honest minzoom, maxzoom, attribution, legend.

            Style parameters (``groups``, ``colormap``, ``highlight``) go on to the tile and legend URLs.
            """
            style.check(self.engine.bundle.codebook)
            with self.open(src, tileMatrixSetId) as reader:
                tiles = self.url_for(
                    request,
                    "tile_format",
                    tileMatrixSetId=tileMatrixSetId,
                    z="{z}",
                    x="{x}",
                    y="{y}",
                    format=tile_format.value,
                )
                size = tilesize or 256 * tile_scale
                query = passthrough_query(request) + ("&" if passthrough_query(request) else "") + f"tilesize={size}"
                response.headers["Cache-Control"] = DOC_CACHE
                return {
                    "tilejson": "3.0.0",
                    "name": src.rsplit("/", 1)[-1],
                    "bounds": reader.get_geographic_bounds(WGS84),
                    "minzoom": reader.minzoom,
                    "maxzoom": reader.maxzoom,
                    "tiles": [f"{tiles}?{query}"],
                    "attribution": self.attribution(src),
                    "legend": self.url_for(request, "legend") + _style_query(request),
                }

    def wmts(self) -> None:
        tms_type = self._tms_literal()

        def capabilities(
            request: Request,
            tms_id: str,
            src: Source,
            tile_format: ClusterFormat,
        ) -> Response:
            tms = self.supported_tms.get(tms_id)
            with self.open(src, tms_id) as reader:
                bounds = reader.get_geographic_bounds(WGS84)
                minzoom, maxzoom = reader.minzoom, reader.maxzoom
            tiles = self.url_for(
                request,
                "tile_format",
                tileMatrixSetId=tms_id,
                z="{TileMatrix}",
                x="{TileCol}",
                y="{TileRow}",
                format=tile_format.value,
            )
            query = passthrough_query(request, drop=("tile_format",))
            body = wmts_capabilities(
                title=f"{src.rsplit('/', 1)[-1]} clusters",
                tms=tms,
                bounds=bounds,
                minzoom=minzoom,
                maxzoom=maxzoom,
                tile_template=f"{tiles}?{query}" if query else tiles,
                capabilities_url=str(request.url),
                media_type=MEDIA[tile_format.value],
                attribution=self.attribution(src),
            )
            return Response(body, media_type="application/xml", headers={"Cache-Control": DOC_CACHE})

        @self.router.get(
            "/WMTSCapabilities.xml",
            response_class=Response,
            operation_id=f"{self.operation_prefix}wmts",
            responses={200: {"content": {"application/xml": {}}}},
        )
        def wmts(
            request: Request,
            src: Source = Depends(self.path_dependency),
            tileMatrixSetId: tms_type = "WebMercatorQuad",  # type: ignore[valid-type]
            tile_format: ClusterFormat = ClusterFormat.png,
            style: Style = Depends(style_params),
        ) -> Response:
            """OGC WMTS 1.0.0 capabilities (QGIS: Layer → Add WMS/WMTS Layer); style parameters go on to the tiles."""
            style.check(self.engine.bundle.codebook)
            return capabilities(request, tileMatrixSetId, src, tile_format)

        @self.router.get(
            "/{tileMatrixSetId}/WMTSCapabilities.xml",
            response_class=Response,
            operation_id=f"{self.operation_prefix}wmtsForTileMatrixSet",
            responses={200: {"content": {"application/xml": {}}}},
        )
        def wmts_for_tms(
            request: Request,
            tileMatrixSetId: Annotated[tms_type, Path()],  # type: ignore[valid-type]
            src: Source = Depends(self.path_dependency),
            tile_format: ClusterFormat = ClusterFormat.png,
            style: Style = Depends(style_params),
        ) -> Response:
            """The same capabilities, tiling scheme in the path."""
            style.check(self.engine.bundle.codebook)
            return capabilities(request, tileMatrixSetId, src, tile_format)

    def map_viewer(self) -> None:  # type: ignore[override]
        @self.router.get(
            "/{tileMatrixSetId}/map.html",
            response_class=HTMLResponse,
            operation_id=f"{self.operation_prefix}map",
            name="map_viewer",  # the name TiTiler's OGC tileset links point to
        )
        def map_html(
            request: Request,
            tileMatrixSetId: Literal["WebMercatorQuad"],
            src: Source = Depends(self.path_dependency),
        ) -> HTMLResponse:
            """A Leaflet map of the cluster layer (Leaflet from this server: works offline)."""
            tilejson = self.url_for(request, "tilejson", tileMatrixSetId=tileMatrixSetId)
            page = map_page(
                f"{tilejson}?{request.url.query}",
                str(request.url_for("static", path="leaflet/leaflet.js")),
                str(request.url_for("static", path="leaflet/leaflet.css")),
            )
            return HTMLResponse(page)

    # -- data ----------------------------------------------------------------------------
    def info(self) -> None:  # type: ignore[override]
        @self.router.get("/info", operation_id=f"{self.operation_prefix}info")
        def info(src: Source = Depends(self.path_dependency)) -> dict[str, Any]:
            """rio-tiler's info plus the 0.25 m analysis grid (CRS, pixel size, patches, windows, bands, rescale)."""
            with self.open(src) as reader:
                grid = reader.view.grid
                meta = reader.info().model_dump(exclude_none=True, mode="json")
                return {
                    **meta,
                    "analysis": {
                        "crs": grid.crs.to_string(),
                        "gsd_m": self.engine.bundle.gsd,
                        "pixel_size_crs_units": grid.pixel,
                        "patch_px": grid.patch,
                        "window_px": grid.window,
                        "origin": [grid.x0, grid.y0],  # on the ground lattice: a multiple of one window core
                        "patches": [grid.rows, grid.cols],
                        "windows": [grid.window_rows, grid.window_cols],
                        "bands_used": list(reader.view.plan.indexes),
                        "rescale": None
                        if reader.view.plan.low is None
                        else {"low": reader.view.plan.low, "high": reader.view.plan.high},
                    },
                    "minzoom": reader.minzoom,
                    "maxzoom": reader.maxzoom,
                }

    def point(self) -> None:  # type: ignore[override]
        codebook = self.engine.bundle.codebook

        @self.router.get(
            "/point/{lon},{lat}", response_model=ClusterPoint, operation_id=f"{self.operation_prefix}point"
        )
        def point(
            lon: Annotated[float, Path(ge=-180, le=180)],
            lat: Annotated[float, Path(ge=-90, le=90)],
            src: Source = Depends(self.path_dependency),
            style: Style = Depends(style_params),
        ) -> dict[str, Any]:
            """The cluster (and group) of the patch under (lon, lat): TiTiler's point shape plus id and colour."""
            style.check(codebook)
            with self.open(src) as reader:
                found = reader.cluster_point(lon, lat)
            cid = found["cluster"]
            gid = None if cid is None or style.groups is None else int(codebook.groups(style.groups)[cid])
            shown = gid if style.groups is not None else cid
            return {
                "coordinates": [lon, lat],
                "values": [shown],
                "band_names": ["group" if style.groups is not None else "cluster"],
                "cluster": cid,
                "group": gid,
                "color": None if shown is None else [int(c) for c in style.lut(codebook)[shown][:3]],
                "patch": found["patch"],
                "item": found.get("item"),
            }

    def statistics(self) -> None:  # type: ignore[override]
        codebook = self.engine.bundle.codebook
        colors = codebook.colors

        @self.router.get("/statistics", response_model=Statistics, operation_id=f"{self.operation_prefix}statistics")
        def statistics(
            src: Source = Depends(self.path_dependency),
            bbox: tuple[float, float, float, float] = Depends(bbox_query),
            style: Style = Depends(style_params),
        ) -> dict[str, Any]:
            """Share of each cluster (and, with ``groups``, of each group) among the bbox's patches, largest first."""
            style.check(codebook)
            with self.open(src) as reader:
                counts, patches = reader.cluster_counts(bbox)
            return {
                "bbox": list(bbox),
                "gsd_m": self.engine.bundle.gsd,
                "patches": patches,
                "valid_patches": int(counts.sum()),
                "clusters": cluster_shares(counts, colors),
                "groups": None
                if style.groups is None
                else group_shares(counts, codebook.groups(style.groups), style.lut(codebook)),
                "items": getattr(reader, "covered", None),
            }

    def legend(self) -> None:
        codebook = self.engine.bundle.codebook

        @self.router.get(
            "/legend",
            response_model=Legend,
            response_model_exclude_none=True,
            operation_id=f"{self.operation_prefix}legend",
        )
        def legend(response: Response, style: Style = Depends(style_params)) -> dict[str, Any]:
            """Id → colour as tiles with the same ``groups``/``colormap``/``highlight`` show it (every image alike).

            Without ``groups``: the K clusters. With ``groups=N``: each group's colour and member clusters,
            and each cluster's group.
            """
            style.check(codebook)
            response.headers["Cache-Control"] = TILE_CACHE
            lut = style.lut(codebook)
            if style.groups is None:
                clusters = [{"cluster": i, "color": [int(v) for v in lut[i][:3]]} for i in range(codebook.k)]
                return {"k": codebook.k, "clusters": clusters, "highlight": list(style.highlight)}
            labels = codebook.groups(style.groups)
            base = style.colors(codebook)
            clusters = [
                {"cluster": i, "color": [int(v) for v in base[g][:3]], "group": int(g)} for i, g in enumerate(labels)
            ]
            groups = [
                {
                    "group": g,
                    "color": [int(v) for v in lut[g][:3]],
                    "clusters": [int(c) for c in np.flatnonzero(labels == g)],
                }
                for g in range(int(labels.max()) + 1)
            ]
            return {"k": codebook.k, "clusters": clusters, "groups": groups, "highlight": list(style.highlight)}


def _bind(endpoint: Callable[..., Response], path_deps: dict[str, Callable[..., Any]]) -> Callable[..., Response]:
    """The tile endpoint with `format`/`scale` taken from the path (``.png``, ``@2x``) instead of the query."""
    import inspect

    signature = inspect.signature(endpoint)
    params = [
        p.replace(default=Depends(path_deps[p.name])) if p.name in path_deps else p
        for p in signature.parameters.values()
        if p.name in path_deps or p.name not in ("format", "scale")
    ]

    def bound(**kwargs: Any) -> Response:
        kwargs.setdefault("format", ClusterFormat.png)
        kwargs.setdefault("scale", 1)
        return endpoint(**kwargs)

    bound.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    bound.__doc__ = endpoint.__doc__
    bound.__name__ = endpoint.__name__
    return bound
