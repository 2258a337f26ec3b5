"""The FastAPI application: cluster tiles under /cog, plain RGB tiles under /rgb, a viewer at /."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Query
from rasterio.errors import RasterioError, RasterioIOError
from rio_tiler.errors import NoOverviewWarning, RioTilerError, TileOutsideBounds
from starlette import status
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.staticfiles import StaticFiles
from titiler.core.errors import DEFAULT_STATUS_CODES
from titiler.core.factory import TilerFactory, TMSFactory

from service.bundle import Bundle, load_bundle
from service.cache import ByteLRU
from service.clusters import ClusterEngine
from service.config import Settings
from service.encoder import Encoder
from service.factory import ClusterTilerFactory
from service.limits import BadRequest, DeadlineExceeded, InferenceGate, Overloaded, RequestTooLarge
from service.middleware import BodyTooLarge, RequestGuard
from service.reader import BelowMinZoom
from service.sources import (
    ReadLimits,
    SourceForbidden,
    SourceNotFound,
    SourceUnreadable,
    UpstreamError,
    UpstreamTimeout,
    gdal_env,
    guarded_reader,
    resolve_source,
)
from service.stac import JobNotFound, StacBadRequest, StacTimeout, StacUpstreamError
from service.stac_factory import StacTilerFactory

logger = logging.getLogger("dinotiles")
VIEWER = Path(__file__).parent / "viewer"
STATUS_CODES: dict[type[Exception], int] = {
    **DEFAULT_STATUS_CODES,
    SourceForbidden: status.HTTP_403_FORBIDDEN,
    SourceNotFound: status.HTTP_404_NOT_FOUND,
    SourceUnreadable: status.HTTP_400_BAD_REQUEST,
    BelowMinZoom: status.HTTP_404_NOT_FOUND,
    TileOutsideBounds: status.HTTP_404_NOT_FOUND,
    RequestTooLarge: status.HTTP_400_BAD_REQUEST,
    BadRequest: status.HTTP_400_BAD_REQUEST,
    Overloaded: status.HTTP_503_SERVICE_UNAVAILABLE,
    DeadlineExceeded: status.HTTP_504_GATEWAY_TIMEOUT,
    UpstreamError: status.HTTP_502_BAD_GATEWAY,
    UpstreamTimeout: status.HTTP_504_GATEWAY_TIMEOUT,
    BodyTooLarge: status.HTTP_413_CONTENT_TOO_LARGE,
    StacBadRequest: status.HTTP_400_BAD_REQUEST,
    JobNotFound: status.HTTP_404_NOT_FOUND,
    StacUpstreamError: status.HTTP_502_BAD_GATEWAY,
    StacTimeout: status.HTTP_504_GATEWAY_TIMEOUT,
    RasterioIOError: status.HTTP_400_BAD_REQUEST,
    RasterioError: status.HTTP_400_BAD_REQUEST,
    RioTilerError: status.HTTP_400_BAD_REQUEST,
}


def static_root() -> Path | None:
    """Leaflet from npm (installed by the Makefile), served locally: users may be offline."""
    for base in (Path.cwd(), Path(__file__).resolve().parent.parent):
        dist = base / "node_modules" / "leaflet" / "dist"
        if dist.is_dir():
            return dist
    return None


def local_sources(settings: Settings) -> list[dict[str, str]]:
    """GeoTIFFs directly under the local roots, for the viewer's list."""
    found = []
    for root in settings.local_roots:
        if root.is_dir():
            for tif in sorted(root.glob("*.tif")):
                found.append({"name": tif.stem, "url": str(tif)})
    return found


def create_app(settings: Settings | None = None, bundle: Bundle | None = None) -> FastAPI:
    """Build the app; the bundle is loaded (and checked) once, here, not per request."""
    settings = settings or Settings.from_env()
    bundle = bundle or load_bundle(settings.bundle)
    warnings.filterwarnings("ignore", category=NoOverviewWarning)  # small images need none; once per tile is noise
    encoder = Encoder.for_bundle(bundle, settings.providers)
    engine = ClusterEngine(bundle, encoder, ByteLRU(settings.cache_bytes), InferenceGate(settings.max_queue))

    app = FastAPI(title="dinotiles", description="DINOv2 cluster tiles for aerial imagery")
    app.state.engine = engine
    app.state.settings = settings

    clusters = ClusterTilerFactory(engine=engine, settings=settings, router_prefix="/cog")
    app.include_router(clusters.router, prefix="/cog", tags=["Clusters"])

    def checked_path(url: Annotated[str, Query(description="COG URL or local path")]) -> str:
        return resolve_source(url, settings).path

    stac = StacTilerFactory(engine=engine, settings=settings, router_prefix="/stac")
    app.include_router(stac.router, prefix="/stac", tags=["STAC"])

    rgb = TilerFactory(
        reader=guarded_reader(ReadLimits.of(settings)),
        path_dependency=checked_path,
        environment_dependency=lambda: gdal_env(settings),
        router_prefix="/rgb",
        add_viewer=False,
        add_ogc_maps=False,
    )
    app.include_router(rgb.router, prefix="/rgb", tags=["Imagery"])
    app.include_router(TMSFactory().router, tags=["Tiling Schemes"])
    add_error_handlers(app, STATUS_CODES)
    _add_validation_as_json(app)
    app.add_middleware(RequestGuard, settings=settings)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        """Answered on the event loop: never waits behind tiles in the thread pool."""
        return {
            "status": "ok",
            "bundle": bundle.manifest.get("variant"),
            "k": bundle.codebook.k,
            "providers": encoder.providers,
            "cache": {"bytes": engine.cache.size, "entries": len(engine.cache), "hits": engine.cache.hits},
            "queue": {
                "waiting_windows": engine.gate.waiting,
                "max": engine.gate.max_queue,
                "rejected": engine.gate.rejected,
            },
        }

    @app.get("/sources")
    def sources() -> list[dict[str, str]]:
        return local_sources(settings)

    @app.get("/", include_in_schema=False)
    def viewer() -> FileResponse:
        return FileResponse(VIEWER / "index.html")

    static = static_root()
    if static is not None:
        app.mount("/static/leaflet", StaticFiles(directory=static), name="leaflet")
    return app


def add_error_handlers(app: FastAPI, codes: dict[type[Exception], int]) -> None:
    """One status map for every route; 5xx are logged with the request id, 503 says when to retry."""

    def handler_for(code: int) -> Any:
        async def handler(request: Request, exc: Exception) -> JSONResponse:
            request_id = request.scope.get("state", {}).get("request_id", "-")
            headers = {}
            if isinstance(exc, Overloaded):
                headers["Retry-After"] = str(exc.retry_after)
            if code >= 500:
                logger.warning("%s %s -> %d [%s]: %s", request.method, request.url.path, code, request_id, exc)
            return JSONResponse({"detail": str(exc)}, status_code=code, headers=headers)

        return handler

    for exc_class, code in codes.items():
        app.add_exception_handler(exc_class, handler_for(code))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        request_id = request.scope.get("state", {}).get("request_id", "-")
        logger.exception("%s %s -> 500 [%s]", request.method, request.url.path, request_id)
        return JSONResponse(
            {"detail": f"internal error (request id {request_id})"},
            status_code=500,
            headers={"X-Request-ID": request_id},
        )


def _add_validation_as_json(app: FastAPI) -> None:
    """FastAPI already answers bad parameters with 422 JSON; keep the detail one readable line too."""
    from fastapi.exceptions import RequestValidationError

    @app.exception_handler(RequestValidationError)
    async def handler(request: Any, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse(
            {"detail": f"{where}: {first.get('msg', 'invalid request')}", "errors": errors_json(errors)},
            status_code=422,
        )


def errors_json(errors: Any) -> list[dict[str, Any]]:
    return [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", ""))} for e in errors]
