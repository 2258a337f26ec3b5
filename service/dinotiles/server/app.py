"""The FastAPI application: cluster tiles under /cog, plain RGB tiles under /rgb, a viewer at /."""

from __future__ import annotations

import logging
from importlib.resources import files
from typing import Annotated, Any

from fastapi import FastAPI, Query
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles
from titiler.core.factory import TilerFactory, TMSFactory

from dinotiles.core.bundle import Bundle, load_bundle
from dinotiles.core.precomputed import ResultsIndex
from dinotiles.core.sources import (
    gdal_env,
    guarded_reader,
    resolve_source,
)
from dinotiles.server.collections import CollectionTilerFactory, collections_router
from dinotiles.server.errors import add_error_handlers
from dinotiles.server.factory import ClusterTilerFactory, strict_router
from dinotiles.server.metrics import Metrics
from dinotiles.server.middleware import CompressText, RequestGuard
from dinotiles.server.settings import Settings
from dinotiles.server.stac_factory import StacItemByIdFactory, StacTilerFactory

logger = logging.getLogger("dinotiles")
PACKAGE = files("dinotiles.server")  # viewer and front-end files ship inside the package: a wheel works offline


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
    engine = settings.open_engine(bundle)
    encoder, queue, shared = engine.encoder, engine.queue, engine.shared

    app = FastAPI(
        title="dinotiles",
        description="DINOv2 cluster tiles for aerial imagery",
        docs_url=None,  # served below from the package's own Swagger UI / ReDoc files, not a CDN
        redoc_url=None,
    )
    app.state.engine = engine
    app.state.settings = settings

    clusters = ClusterTilerFactory(engine=engine, settings=settings, router_prefix="/cog")
    app.include_router(clusters.router, prefix="/cog", tags=["Clusters"])
    # precomputed results: served as layers, and read instead of encoding for the sources they cover
    index = ResultsIndex(settings.results, engine.fingerprint, settings.results_refresh_seconds)
    app.state.results = index
    if settings.results:
        engine.results = index.ids_for
    app.include_router(collections_router(index), tags=["Result collections"])
    by_collection = "/collections/{collection_id}"
    results = CollectionTilerFactory(engine=engine, settings=settings, index=index, router_prefix=by_collection)
    app.include_router(results.router, prefix=by_collection, tags=["Result collections"])

    policy = settings.source_policy()
    gdal_env(policy)  # starts the egress guard now: an unsafe environment (NO_PROXY) stops start-up, not a request

    def checked_path(url: Annotated[str, Query(description="COG URL or local path")]) -> str:
        return resolve_source(url, policy).path

    stac = StacTilerFactory(engine=engine, settings=settings, router_prefix="/stac")
    app.include_router(stac.router, prefix="/stac", tags=["STAC"])
    by_id = "/stac/collections/{collection_id}/items/{item_id}"
    stac_items = StacItemByIdFactory(engine=engine, settings=settings, router_prefix=by_id, name="stacItem")
    app.include_router(stac_items.router, prefix=by_id, tags=["STAC"])

    rgb = TilerFactory(
        reader=guarded_reader(policy),
        path_dependency=checked_path,
        environment_dependency=lambda: gdal_env(policy),
        router_prefix="/rgb",
        router=strict_router(),  # TiTiler's routes refuse unknown parameters too
        add_viewer=False,
        add_ogc_maps=False,
    )
    app.include_router(rgb.router, prefix="/rgb", tags=["Imagery"])
    app.include_router(TMSFactory().router, tags=["Tiling Schemes"])
    add_error_handlers(app)
    # outermost last: CORS answers preflights first; the guard bounds and tags every request
    app.add_middleware(CompressText)
    app.add_middleware(Metrics, engine=engine)
    app.add_middleware(RequestGuard, settings=settings)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(settings.cors_origins),
        allow_methods=["GET", "HEAD", "POST", "OPTIONS"],
        allow_headers=["*"],
        expose_headers=["ETag", "Server-Timing", "X-Request-ID", "Content-Bbox", "Retry-After"],
        max_age=3600,
    )

    @app.get("/healthz", operation_id="healthz")
    async def healthz() -> dict[str, Any]:
        """Answered on the event loop: never waits behind tiles in the thread pool."""
        return {
            "status": "ok",
            "bundle": bundle.manifest.get("variant"),
            "k": bundle.codebook.k,
            "providers": encoder.providers,
            "cache": {"bytes": engine.cache.size, "entries": len(engine.cache), "hits": engine.cache.hits},
            "shared_cache": None
            if shared is None
            else {"up": shared.available, "hits": shared.hits, "misses": shared.misses, "errors": shared.errors},
            "windows_encoded": engine.windows_encoded,
            "queue": {
                "queued_windows": queue.reserved,
                "max": queue.max_queue,
                "rejected": queue.rejected,
                "batch_size": queue.max_batch,
            },
        }

    @app.get("/sources", operation_id="sources")
    def sources() -> list[dict[str, str]]:
        """GeoTIFFs directly under the local roots (the viewer's list)."""
        return local_sources(settings)

    @app.get("/", include_in_schema=False)
    def viewer() -> HTMLResponse:
        return HTMLResponse((PACKAGE / "viewer" / "index.html").read_text())

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title="dinotiles API",
            swagger_js_url="/static/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url="/static/swagger-ui/swagger-ui.css",
            swagger_favicon_url="/static/swagger-ui/favicon-32x32.png",
        )

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title="dinotiles API",
            redoc_js_url="/static/redoc/redoc.standalone.js",
            with_google_fonts=False,
        )

    app.mount("/static", StaticFiles(directory=str(PACKAGE / "static")), name="static")
    return app
