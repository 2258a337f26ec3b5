"""/stac routes: search, item tiles (TiTiler's STAC conventions), item statistics, scene clustering.

Subclasses the cluster factory: `url=<item>&assets=visual` resolves to the item's
GeoTIFF asset, then every route runs through the same windows and cache as /cog.
"""

from collections.abc import Callable
from typing import Annotated, Any, Literal

from attrs import define, field
from fastapi import Body, Depends, Query
from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import JSONResponse

from dinotiles.core.sources import Source, resolve_source
from dinotiles.server.factory import ClusterTilerFactory, cluster_shares
from dinotiles.stac.client import SearchParams, StacBadRequest, StacClient, search_params
from dinotiles.stac.items import ItemCache, item_href, raster_asset
from dinotiles.stac.jobs import JobNotFound, Jobs
from dinotiles.stac.summary import STATS_SAMPLE, cluster_items, sampled_counts


class SceneSearch(BaseModel):
    """Which items to cluster: STAC search parameters, and how to summarise each item."""

    bbox: list[float] | None = Field(default=None, description="minx,miny,maxx,maxy (EPSG:4326)")
    datetime: str | None = Field(default=None, description="RFC 3339 instant or interval")
    collections: list[str] | None = None
    limit: int = Field(default=50, ge=3, le=500)
    assets: str = "visual"
    feature: Literal["cls", "mean", "both"] = "cls"  # CLS won on AID (docs/scene-clustering.md)


@define(kw_only=True)
class StacTilerFactory(ClusterTilerFactory):
    items: ItemCache = field(factory=ItemCache)
    jobs: Jobs = field(init=False)

    def __attrs_post_init__(self) -> None:
        settings = self.settings
        policy = settings.source_policy()
        self.jobs = Jobs(workers=settings.jobs, pending=settings.max_pending_jobs)

        def item_asset(
            url: Annotated[str, Query(description="STAC item URL")],
            assets: Annotated[list[str] | None, Query(description="asset name (default: visual)")] = None,
        ) -> Source:
            item = self.items.get(url, policy, settings.stac_url, settings.stac_timeout)
            return resolve_source(raster_asset(item, assets)[1], policy)

        self.path_dependency = item_asset
        super().__attrs_post_init__()

    def stac_client(self) -> StacClient:
        return StacClient(self.settings.stac_url, self.settings.stac_timeout)

    def register_routes(self) -> None:
        """The /cog routes (statistics overridden below for whole items), plus search and scenes."""
        super().register_routes()
        self.search()
        self.scenes()

    def search(self) -> None:
        @self.router.get("/search")
        def search(
            request: Request,
            bbox: str | None = None,
            datetime: str | None = None,
            collections: str | None = None,
            limit: Annotated[int, Query(ge=1, le=1000)] = 10,
        ) -> dict[str, Any]:
            params = search_params(bbox, datetime, collections, limit)
            result = self.stac_client().search(params)
            base = str(request.base_url).rstrip("/") + self.router_prefix
            for item in result["features"]:
                href = item_href(item, self.settings.stac_url)
                try:
                    asset = raster_asset(item, None)[0]
                except StacBadRequest:
                    continue
                item.setdefault("links", []).append(
                    {
                        "rel": "cluster-tilejson",
                        "type": "application/json",
                        "title": "dinotiles cluster layer",
                        "href": f"{base}/WebMercatorQuad/tilejson.json?url={_q(href)}&assets={asset}",
                    }
                )
            return {
                "type": "FeatureCollection",
                "features": result["features"],
                "numberReturned": len(result["features"]),
            }

    def statistics(self) -> None:
        colors = self.engine.bundle.codebook.colors

        @self.router.get("/statistics")
        def statistics(url: str = Depends(self.path_dependency)) -> dict[str, Any]:
            with self.reader(url) as src:
                counts, sampled, total = sampled_counts(self.engine, src.view)
            valid = int(counts.sum())
            if valid == 0:
                raise StacBadRequest("the item's sampled windows hold no valid pixels")
            return {
                "clusters": cluster_shares(counts, colors),
                "sample": {
                    "windows": sampled,
                    "of": total,
                    "patches": valid,
                    "exact": sampled == total,
                    "method": f"all windows if at most {STATS_SAMPLE}, else {STATS_SAMPLE} chosen uniformly "
                    "at random (seed 0) among the item's windows",
                },
            }

    def scenes(self) -> None:
        @self.router.post("/scenes/cluster", status_code=200)
        def cluster(request: Request, body: Annotated[SceneSearch, Body()]) -> Any:
            params = SearchParams(
                bbox=search_params(",".join(map(str, body.bbox)) if body.bbox else None, None, None, 1).bbox,
                datetime=search_params(None, body.datetime, None, 1).datetime,
                collections=tuple(body.collections or ()),
                limit=body.limit,
            )
            items = self.stac_client().search(params)["features"]
            if not items:
                return JSONResponse({"detail": "the search matched no items"}, status_code=404)
            if len(items) < 3:
                raise StacBadRequest(f"need at least 3 items to cluster, the search matched {len(items)}")

            policy = self.settings.source_policy()

            def work(progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
                def resolve(href: str) -> Source:
                    return resolve_source(href, policy)

                return cluster_items(self.reader_cls, resolve, items, body.assets, body.feature, progress)

            if len(items) > self.settings.scenes_sync_max:
                job = self.jobs.submit(work, total=len(items))
                href = str(request.base_url).rstrip("/") + f"{self.router_prefix}/jobs/{job.id}"
                return JSONResponse(
                    {"job": job.id, "status": job.status, "href": href, "items": len(items)},
                    status_code=202,
                    headers={"Location": href},
                )
            return work()

        @self.router.get("/jobs/{job_id}")
        def job(job_id: str) -> dict[str, Any]:
            found = self.jobs.get(job_id)
            if found is None:
                raise JobNotFound(f"no job {job_id}")
            return found.as_dict()


def _q(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")
