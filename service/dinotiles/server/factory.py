"""ClusterTilerFactory: TiTiler-style routes whose tiles are cluster colours or IDs.

Built like titiler.core's TilerFactory (attrs class, routes registered on a router,
dependencies injected) so it mounts beside TiTiler's own factories.
"""

import io
from collections.abc import Callable
from enum import StrEnum
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

import numpy as np
import rasterio
from attrs import define, field
from fastapi import Depends, Path, Query
from morecantile import TileMatrixSet
from morecantile import tms as default_tms
from morecantile.defaults import TileMatrixSets
from rasterio.transform import from_bounds
from rio_tiler.models import ImageData
from rio_tiler.utils import render
from starlette.requests import Request
from starlette.responses import Response
from titiler.core.errors import BadRequestError
from titiler.core.factory import BaseFactory
from titiler.core.models.mapbox import TileJSON

from dinotiles.core.colors import colorize
from dinotiles.core.encoder import NODATA
from dinotiles.core.engine import ClusterEngine
from dinotiles.core.limits import parse_bbox
from dinotiles.core.reader import WGS84, ClusterReader, cluster_reader
from dinotiles.core.sources import Source, resolve_source
from dinotiles.server.settings import Settings


class ClusterFormat(StrEnum):
    """png/webp: RGBA colours (alpha 0 = no data); npy/tif: uint16 IDs, 65535 = no data."""

    png = "png"
    webp = "webp"
    npy = "npy"
    tif = "tif"


MEDIA = {"png": "image/png", "webp": "image/webp", "npy": "application/x-binary", "tif": "image/tiff"}


def default_scale() -> int:
    return 1


def path_scale(scale: Annotated[int, Path(ge=1, le=4, description="@Nx: N×256 px tiles")]) -> int:
    return scale


def default_format() -> ClusterFormat:
    return ClusterFormat.png


def path_format(format: Annotated[ClusterFormat, Path()]) -> ClusterFormat:
    return format


def bbox_query(
    bbox: Annotated[str, Query(description="minx,miny,maxx,maxy in EPSG:4326 (minx > maxx crosses ±180°)")],
) -> tuple[float, float, float, float]:
    return parse_bbox(bbox)


def encode_tile(image: ImageData, fmt: ClusterFormat, colors: np.ndarray) -> bytes:
    ids = np.asarray(image.array.data)
    if fmt in (ClusterFormat.png, ClusterFormat.webp):
        rgb, alpha = colorize(ids, colors)
        return bytes(render(rgb, mask=alpha, img_format=fmt.value.upper()))
    if fmt == ClusterFormat.npy:
        buf = io.BytesIO()
        np.save(buf, ids[0])
        return buf.getvalue()
    height, width = ids.shape[1:]
    with rasterio.MemoryFile() as mem:
        with mem.open(
            driver="GTiff",
            width=width,
            height=height,
            count=1,
            dtype="uint16",
            nodata=NODATA,
            crs=image.crs,
            transform=from_bounds(*image.bounds, width, height),  # type: ignore[misc]
        ) as dst:
            dst.write(ids)
        return bytes(mem.read())


@define(kw_only=True)
class ClusterTilerFactory(BaseFactory):
    """/tiles, /tilejson.json, /WMTSCapabilities.xml, /info, /point, /statistics over cluster IDs."""

    engine: ClusterEngine
    settings: Settings
    supported_tms: TileMatrixSets = default_tms
    # what `url=` (and friends) resolve to before reading: a checked Source. The URL guard lives
    # here, in the server's dependency, not in the reader; STAC items override it.
    path_dependency: Callable[..., Source] | None = None
    reader_cls: type[ClusterReader] = field(init=False)

    def __attrs_post_init__(self) -> None:
        policy = self.settings.source_policy()
        self.reader_cls = cluster_reader(self.engine, policy, self.settings.request_limits())
        if self.path_dependency is None:

            def guarded_source(
                url: Annotated[str, Query(description="COG: local path under a configured root, http(s) or s3 URL")],
            ) -> Source:
                return resolve_source(url, policy)

            self.path_dependency = guarded_source
        super().__attrs_post_init__()

    def reader(self, src: str, tms_id: str = "WebMercatorQuad") -> ClusterReader:
        return self.reader_cls(src, tms=self.supported_tms.get(tms_id))

    def register_routes(self) -> None:
        self.tile()
        self.tilejson()
        self.wmts()
        self.info()
        self.point()
        self.statistics()

    def _tms_literal(self) -> Any:
        return Literal[tuple(self.supported_tms.list())]

    def tile(self) -> None:
        tms_type = self._tms_literal()
        colors = self.engine.bundle.codebook.colors

        def make_endpoint(scale_dep: Any, format_dep: Any) -> Any:
            def tile(
                z: Annotated[int, Path(ge=0, le=30)],
                x: Annotated[int, Path(ge=0)],
                y: Annotated[int, Path(ge=0)],
                tileMatrixSetId: Annotated[tms_type, Path()],  # type: ignore[valid-type]
                url: str = Depends(self.path_dependency),
                scale: int = Depends(scale_dep),
                format: ClusterFormat = Depends(format_dep),
            ) -> Response:
                tms = self.supported_tms.get(tileMatrixSetId)
                check_tile_index(tms, x, y, z)
                with self.reader(url, tileMatrixSetId) as src:
                    image = src.tile(x, y, z, tilesize=256 * scale)
                return Response(
                    encode_tile(image, format, colors),
                    media_type=MEDIA[format.value],
                    headers={
                        "Content-Bbox": ",".join(map(str, image.bounds or ())),
                        "Cache-Control": "public, max-age=3600",
                    },
                )

            return tile

        base = "/tiles/{tileMatrixSetId}/{z}/{x}/{y}"
        # most specific first: `{y}` alone would also swallow "1@2x.png"
        for suffix, name, scale_dep, format_dep in (
            ("@{scale}x.{format}", "tile_scale_format", path_scale, path_format),
            ("@{scale}x", "tile_scale", path_scale, default_format),
            (".{format}", "tile_format", default_scale, path_format),
            ("", "tile", default_scale, default_format),
        ):
            self.router.add_api_route(
                base + suffix,
                make_endpoint(scale_dep, format_dep),
                methods=["GET"],
                name=name,
                response_class=Response,
                responses={200: {"content": {m: {} for m in MEDIA.values()}}},
            )

    def tilejson(self) -> None:
        tms_type = self._tms_literal()

        @self.router.get("/{tileMatrixSetId}/tilejson.json", response_model=TileJSON, response_model_exclude_none=True)
        def tilejson(
            request: Request,
            tileMatrixSetId: Annotated[tms_type, Path()],  # type: ignore[valid-type]
            url: str = Depends(self.path_dependency),
            tile_format: ClusterFormat = ClusterFormat.png,
            tile_scale: Annotated[int, Query(ge=1, le=4)] = 1,
        ) -> dict[str, Any]:
            with self.reader(url, tileMatrixSetId) as src:
                tiles = self.url_for(
                    request,
                    "tile_scale_format",
                    tileMatrixSetId=tileMatrixSetId,
                    z="{z}",
                    x="{x}",
                    y="{y}",
                    scale=str(tile_scale),
                    format=tile_format.value,
                )
                return {
                    "tilejson": "3.0.0",
                    "name": url.rsplit("/", 1)[-1],
                    "bounds": src.get_geographic_bounds(WGS84),
                    "minzoom": src.minzoom,
                    "maxzoom": src.maxzoom,
                    "tiles": [f"{tiles}?{passthrough_query(request)}"],
                    "attribution": "dinotiles clusters",
                }

    def wmts(self) -> None:
        tms_type = self._tms_literal()

        @self.router.get("/{tileMatrixSetId}/WMTSCapabilities.xml", response_class=Response)
        def wmts(
            request: Request,
            tileMatrixSetId: Annotated[tms_type, Path()],  # type: ignore[valid-type]
            url: str = Depends(self.path_dependency),
        ) -> Response:
            tms = self.supported_tms.get(tileMatrixSetId)
            with self.reader(url, tileMatrixSetId) as src:
                body = wmts_document(request, self, tms, url, src)
            return Response(body, media_type="application/xml")

    def info(self) -> None:
        @self.router.get("/info")
        def info(url: str = Depends(self.path_dependency)) -> dict[str, Any]:
            with self.reader(url) as src:
                grid = src.view.grid
                meta = src.view.reader.info().model_dump(exclude_none=True, mode="json")
                return {
                    **meta,
                    "analysis": {
                        "crs": grid.crs.to_string(),
                        "gsd_m": self.engine.bundle.gsd,
                        "pixel_size_crs_units": grid.pixel,
                        "patch_px": grid.patch,
                        "window_px": grid.window,
                        "patches": [grid.rows, grid.cols],
                        "windows": [grid.window_rows, grid.window_cols],
                        "bands_used": list(src.view.plan.indexes),
                        "rescale": None
                        if src.view.plan.low is None
                        else {"low": src.view.plan.low, "high": src.view.plan.high},
                    },
                    "minzoom": src.minzoom,
                    "maxzoom": src.maxzoom,
                }

    def point(self) -> None:
        colors = self.engine.bundle.codebook.colors

        @self.router.get("/point/{lon},{lat}")
        def point(
            lon: Annotated[float, Path(ge=-180, le=180)],
            lat: Annotated[float, Path(ge=-90, le=90)],
            url: str = Depends(self.path_dependency),
        ) -> dict[str, Any]:
            with self.reader(url) as src:
                found = src.cluster_point(lon, lat)
            cid = found["cluster"]
            return {
                "coordinates": [lon, lat],
                "cluster": cid,
                "color": None if cid is None else [int(c) for c in colors[cid]],
                **found,
            }

    def statistics(self) -> None:
        colors = self.engine.bundle.codebook.colors

        @self.router.get("/statistics")
        def statistics(
            url: str = Depends(self.path_dependency),
            bbox: tuple[float, ...] = Depends(bbox_query),
        ) -> dict[str, Any]:
            with self.reader(url) as src:
                counts, patches = src.cluster_counts(bbox)  # type: ignore[arg-type]
            return {
                "bbox": list(bbox),
                "gsd_m": self.engine.bundle.gsd,
                "patches": patches,
                "valid_patches": int(counts.sum()),
                "clusters": cluster_shares(counts, colors),
            }


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


def passthrough_query(request: Request) -> str:
    """The request's own source parameters (url, assets…), minus the document's options."""
    drop = {"tile_format", "tile_scale", "tilematrixsetid"}
    return urlencode([(k, v) for k, v in request.query_params.multi_items() if k.lower() not in drop])


def check_tile_index(tms: TileMatrixSet, x: int, y: int, z: int) -> None:
    """z/x/y must exist in the TMS: 400 otherwise (TiTiler answers bad indexes with 4xx too)."""
    if not tms.minzoom <= z <= tms.maxzoom:
        raise BadRequestError(f"zoom {z} is outside {tms.id}'s zooms {tms.minzoom}..{tms.maxzoom}")
    matrix = tms.matrix(z)
    if x >= matrix.matrixWidth or y >= matrix.matrixHeight:
        raise BadRequestError(f"tile {x}/{y} is outside {tms.id} zoom {z} ({matrix.matrixWidth}x{matrix.matrixHeight})")


def wmts_document(
    request: Request, factory: ClusterTilerFactory, tms: TileMatrixSet, url: str, src: ClusterReader
) -> str:
    """WMTS 1.0.0 GetCapabilities with one layer (as TiTiler's WMTS route writes it)."""
    from xml.sax.saxutils import escape

    tiles = factory.url_for(
        request, "tile_format", tileMatrixSetId=tms.id, z="{TileMatrix}", x="{TileCol}", y="{TileRow}", format="png"
    )
    template = escape(f"{tiles}?{passthrough_query(request)}")
    west, south, east, north = src.get_geographic_bounds(WGS84)
    matrices = []
    for z in range(src.minzoom, src.maxzoom + 1):
        m = tms.matrix(z)
        matrices.append(
            f"<TileMatrix><ows:Identifier>{m.id}</ows:Identifier>"
            f"<ScaleDenominator>{m.scaleDenominator}</ScaleDenominator>"
            f"<TopLeftCorner>{m.pointOfOrigin[0]} {m.pointOfOrigin[1]}</TopLeftCorner>"
            f"<TileWidth>{m.tileWidth}</TileWidth><TileHeight>{m.tileHeight}</TileHeight>"
            f"<MatrixWidth>{m.matrixWidth}</MatrixWidth><MatrixHeight>{m.matrixHeight}</MatrixHeight></TileMatrix>"
        )
    crs_uri = tms.crs.srs if hasattr(tms.crs, "srs") else str(tms.crs)
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<Capabilities xmlns="http://www.opengis.net/wmts/1.0" xmlns:ows="http://www.opengis.net/ows/1.1"
 xmlns:xlink="http://www.w3.org/1999/xlink" version="1.0.0">
<ows:ServiceIdentification><ows:Title>dinotiles</ows:Title><ows:ServiceType>OGC WMTS</ows:ServiceType>
<ows:ServiceTypeVersion>1.0.0</ows:ServiceTypeVersion></ows:ServiceIdentification>
<Contents>
<Layer><ows:Title>clusters</ows:Title><ows:Identifier>clusters</ows:Identifier>
<ows:WGS84BoundingBox><ows:LowerCorner>{west} {south}</ows:LowerCorner>
<ows:UpperCorner>{east} {north}</ows:UpperCorner></ows:WGS84BoundingBox>
<Style isDefault="true"><ows:Identifier>default</ows:Identifier></Style>
<Format>image/png</Format>
<TileMatrixSetLink><TileMatrixSet>{tms.id}</TileMatrixSet></TileMatrixSetLink>
<ResourceURL format="image/png" resourceType="tile" template="{template}"/>
</Layer>
<TileMatrixSet><ows:Identifier>{tms.id}</ows:Identifier><ows:SupportedCRS>{escape(crs_uri)}</ows:SupportedCRS>
{"".join(matrices)}
</TileMatrixSet>
</Contents>
</Capabilities>
"""
