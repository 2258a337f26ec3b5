"""Result collections (``dinotiles batch`` output under ``DINOTILES_RESULTS``) served as layers.

``GET /collections`` lists them; ``/collections/{id}/…`` has the routes ``/cog`` has (tiles, TileJSON,
WMTS, point, statistics, legend) with the same styles, from z0 to the on-the-fly maxzoom, read
from the precomputed IDs: the same factory with another reader, as TiTiler-pgstac serves a
collection with the factory it uses for one item.
"""

from __future__ import annotations

from typing import Annotated, Any

from attrs import define
from fastapi import APIRouter, Path, Request
from titiler.core.factory import TilerFactory

from dinotiles.core.precomputed import ResultsIndex, collection_reader
from dinotiles.core.sources import Source
from dinotiles.server.factory import ClusterTilerFactory


@define(kw_only=True)
class CollectionTilerFactory(ClusterTilerFactory):
    """Cluster routes for one result collection, named in the path (``/collections/{collection_id}``)."""

    index: ResultsIndex

    def __attrs_post_init__(self) -> None:
        settings = self.settings
        self.reader = collection_reader(  # type: ignore[assignment]  # duck-typed: the routes' reads only
            self.index,
            self.engine.bundle.gsd,
            self.engine.bundle.codebook.k,
            settings.max_mosaic_items,
            settings.max_collection_stats_area_m2,
            settings.max_read_pixels,
        )
        index = self.index

        def collection_source(
            collection_id: Annotated[str, Path(pattern=r"^[A-Za-z0-9_.\-]{1,120}$", description="result collection")],
        ) -> Source:
            found = index.get(collection_id)  # 404 for an unknown id, before any route's work
            return Source(found.id, f"collection:{found.id}@{found.version}")

        self.path_dependency = collection_source
        TilerFactory.__attrs_post_init__(self)

    def tile_max_age(self, src: str) -> int:
        """A collection changes when a batch adds to it: no longer than its relisting interval."""
        return max(1, min(3600, int(self.settings.results_refresh_seconds)))

    def register_routes(self) -> None:
        self.tile()
        self.tilejson()
        self.wmts()
        self.point()
        self.statistics()
        self.legend()


def collections_router(index: ResultsIndex) -> APIRouter:
    """``GET /collections`` and ``GET /collections/{id}``: what is precomputed, with its layer's links."""
    router = APIRouter()

    def summary(request: Request, cid: str) -> dict[str, Any]:
        c = index.get(cid)
        base = str(request.base_url).rstrip("/") + f"/collections/{c.id}"
        return {
            "id": c.id,
            "description": c.description,
            "items": len(c.items),
            "bbox": list(c.bbox),
            "links": [
                {"rel": "tilejson", "href": f"{base}/WebMercatorQuad/tilejson.json", "type": "application/json"},
                {"rel": "wmts", "href": f"{base}/WMTSCapabilities.xml", "type": "application/xml"},
                {"rel": "legend", "href": f"{base}/legend", "type": "application/json"},
                {"rel": "statistics", "href": f"{base}/statistics", "type": "application/json"},
            ],
        }

    @router.get("/collections", operation_id="resultCollections")
    def list_collections(request: Request) -> dict[str, Any]:
        """Result collections the server found under DINOTILES_RESULTS (refreshed every minute)."""
        return {"collections": [summary(request, cid) for cid in sorted(index.collections())]}

    @router.get("/collections/{collection_id}", operation_id="resultCollection")
    def get_collection(
        request: Request,
        collection_id: Annotated[str, Path(pattern=r"^[A-Za-z0-9_.\-]{1,120}$")],
    ) -> dict[str, Any]:
        """One result collection: its summary and links, the STAC collection as the batch wrote it, and
        the scene clustering stored beside it (``scenes cluster --results``), if any."""
        found = index.get(collection_id)
        return {**summary(request, collection_id), "stac": found.document, "scenes": found.scenes}

    return router
