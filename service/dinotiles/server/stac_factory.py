"""/stac routes: search, item tiles (TiTiler's STAC conventions), item statistics, scene clustering.

Items are addressed two ways, both through the same windows and cache as /cog:
- ``/stac/…?url=<item URL>&assets=visual`` (any STAC item the guard allows), and
- ``/stac/collections/{collection}/items/{item}/…`` against ``DINOTILES_STAC_URL``, the way
  OpenAerialMap's own titiler-pgstac addresses its items.
"""

from collections.abc import Callable
from typing import Annotated, Any, Literal
from urllib.parse import quote

from attrs import define, field
from fastapi import Body, Depends, Path, Query
from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import JSONResponse

from dinotiles.core.colors import Style
from dinotiles.core.sources import Source, resolve_source
from dinotiles.server.dependencies import style_params
from dinotiles.server.factory import ClusterShare, ClusterTilerFactory, GroupShare, cluster_shares, group_shares
from dinotiles.stac.client import SearchParams, StacBadRequest, StacClient, search_params
from dinotiles.stac.items import ItemCache, attribution, item_href, raster_asset
from dinotiles.stac.jobs import JobNotFound, Jobs
from dinotiles.stac.summary import STATS_SAMPLE, cluster_items, sampled_counts

ITEM_ID = r"^[A-Za-z0-9._:\-]{1,200}$"


class SceneSearch(BaseModel):
    """Which items to cluster: STAC search parameters, and how to summarise each item."""

    bbox: list[float] | None = Field(default=None, description="minx,miny,maxx,maxy (EPSG:4326)")
    datetime: str | None = Field(default=None, description="RFC 3339 instant or interval")
    collections: list[str] | None = None
    limit: int = Field(default=50, ge=3, le=500)
    assets: str = "visual"
    feature: Literal["cls", "mean", "both"] = "cls"  # CLS won on AID (docs/scene-clustering.md)


class Sample(BaseModel):
    windows: int
    of: int
    patches: int
    exact: bool
    method: str


class ItemStatistics(BaseModel):
    clusters: list[ClusterShare]
    groups: list[GroupShare] | None = None
    sample: Sample


class SearchResult(BaseModel):
    type: Literal["FeatureCollection"]
    features: list[dict[str, Any]]
    numberReturned: int


class JobProgress(BaseModel):
    done: int
    total: int


class JobStatus(BaseModel):
    job: str
    status: Literal["queued", "running", "done", "failed"]
    progress: JobProgress
    result: dict[str, Any] | None
    error: str | None


class JobAccepted(BaseModel):
    job: str
    status: str
    href: str
    items: int


def item_source(
    item: dict[str, Any], item_url: str, assets: list[str] | None, resolve: Callable[[str], Source]
) -> Source:
    """The item's raster asset as a checked Source that knows the imagery's attribution."""
    src = resolve(raster_asset(item, assets, item_url)[1])
    return Source(src, src.key, attribution(item))


@define(kw_only=True)
class StacItemFactory(ClusterTilerFactory):
    """Cluster routes over one STAC item's GeoTIFF asset (statistics sampled over the whole item)."""

    items: ItemCache = field(factory=ItemCache)
    attribution: Callable[[Source], str] = field(default=lambda src: src.attribution or "Clusters: dinotiles")

    def fetch(self, url: str) -> dict[str, Any]:
        settings = self.settings
        return self.items.get(url, settings.source_policy(), settings.stac_url, settings.stac_timeout)

    def item_dependency(self) -> Callable[..., Source]:
        policy = self.settings.source_policy()

        def item_asset(
            url: Annotated[str, Query(description="STAC item URL")],
            assets: Annotated[list[str] | None, Query(description="asset name (default: visual)")] = None,
        ) -> Source:
            return item_source(self.fetch(url), url, assets, lambda href: resolve_source(href, policy))

        return item_asset

    def __attrs_post_init__(self) -> None:
        if self.path_dependency is None:
            self.path_dependency = self.item_dependency()
        super().__attrs_post_init__()

    def statistics(self) -> None:
        codebook = self.engine.bundle.codebook
        colors = codebook.colors

        @self.router.get(
            "/statistics", response_model=ItemStatistics, operation_id=f"{self.operation_prefix}statistics"
        )
        def statistics(
            src: Source = Depends(self.path_dependency), style: Style = Depends(style_params)
        ) -> dict[str, Any]:
            """The item's cluster (and, with ``groups``, group) shares from a seeded sample of its windows."""
            style.check(codebook)
            with self.open(src) as reader:
                counts, sampled, total = sampled_counts(self.engine, reader.view)
            valid = int(counts.sum())
            if valid == 0:
                raise StacBadRequest("the item's sampled windows hold no valid pixels")
            return {
                "clusters": cluster_shares(counts, colors),
                "groups": None
                if style.groups is None
                else group_shares(counts, codebook.groups(style.groups), style.lut(codebook)),
                "sample": {
                    "windows": sampled,
                    "of": total,
                    "patches": valid,
                    "exact": sampled == total,
                    "method": f"all windows if at most {STATS_SAMPLE}, else {STATS_SAMPLE} chosen uniformly "
                    "at random (seed 0) among the item's windows",
                },
            }


@define(kw_only=True)
class StacItemByIdFactory(StacItemFactory):
    """/stac/collections/{collection_id}/items/{item_id}/…: items of DINOTILES_STAC_URL by id (as OAM's TiTiler)."""

    def __attrs_post_init__(self) -> None:
        policy = self.settings.source_policy()
        api = self.settings.stac_url.rstrip("/")

        def item_by_id(
            collection_id: Annotated[str, Path(pattern=ITEM_ID, description="STAC collection id")],
            item_id: Annotated[str, Path(pattern=ITEM_ID, description="STAC item id")],
            assets: Annotated[list[str] | None, Query(description="asset name (default: visual)")] = None,
        ) -> Source:
            url = f"{api}/collections/{quote(collection_id, safe='')}/items/{quote(item_id, safe='')}"
            return item_source(self.fetch(url), url, assets, lambda href: resolve_source(href, policy))

        self.path_dependency = item_by_id
        super().__attrs_post_init__()


@define(kw_only=True)
class StacTilerFactory(StacItemFactory):
    """Item routes by URL, plus search, scene clustering and its jobs."""

    jobs: Jobs = field(init=False)

    def __attrs_post_init__(self) -> None:
        self.jobs = Jobs(workers=self.settings.jobs, pending=self.settings.max_pending_jobs)
        super().__attrs_post_init__()

    def stac_client(self) -> StacClient:
        return StacClient(self.settings.stac_url, self.settings.stac_timeout)

    def register_routes(self) -> None:
        super().register_routes()
        self.search()
        self.scenes()

    def search(self) -> None:
        @self.router.get("/search", response_model=SearchResult, operation_id=f"{self.operation_prefix}search")
        def search(
            request: Request,
            bbox: str | None = None,
            datetime: str | None = None,
            collections: str | None = None,
            limit: Annotated[int, Query(ge=1, le=1000)] = 10,
        ) -> dict[str, Any]:
            """Items of the STAC API (DINOTILES_STAC_URL), each with a `cluster-tilejson` link."""
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
                        "href": f"{base}/WebMercatorQuad/tilejson.json?url={quote(href, safe='')}&assets={asset}",
                    }
                )
            return {
                "type": "FeatureCollection",
                "features": result["features"],
                "numberReturned": len(result["features"]),
            }

    def scenes(self) -> None:
        @self.router.post(
            "/scenes/cluster",
            status_code=200,
            operation_id=f"{self.operation_prefix}clusterScenes",
            responses={202: {"model": JobAccepted, "description": "large searches run as a job"}},
        )
        def cluster(request: Request, body: Annotated[SceneSearch, Body()]) -> Any:
            """Cluster the scenes a STAC search matches (UMAP + Dirichlet-process mixture); large searches → job."""
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
                    return resolve_source(href, policy)  # asset hrefs are data from the API: guarded

                api = self.settings.stac_url
                return cluster_items(
                    self.cluster_reader,
                    resolve,
                    items,
                    body.assets,
                    body.feature,
                    progress,
                    item_url=lambda item: item_href(item, api),
                )

            if len(items) > self.settings.scenes_sync_max:
                job = self.jobs.submit(work, total=len(items))
                href = str(request.base_url).rstrip("/") + f"{self.router_prefix}/jobs/{job.id}"
                return JSONResponse(
                    {"job": job.id, "status": job.status, "href": href, "items": len(items)},
                    status_code=202,
                    headers={"Location": href},
                )
            return work()

        @self.router.get("/jobs/{job_id}", response_model=JobStatus, operation_id=f"{self.operation_prefix}job")
        def job(job_id: Annotated[str, Path(max_length=64)]) -> dict[str, Any]:
            """A scene-clustering job: status, progress (items done of total), result or error."""
            found = self.jobs.get(job_id)
            if found is None:
                raise JobNotFound(f"no job {job_id}")
            return found.as_dict()
