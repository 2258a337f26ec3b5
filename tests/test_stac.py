"""STAC: a real STAC API (`rustac serve`, in memory, on 127.0.0.1) whose items point at COGs over HTTP."""

from __future__ import annotations

import io
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import morecantile
import numpy as np
import pytest
from fastapi.testclient import TestClient

from dinotiles.server.app import create_app
from tests.conftest import free_port

# every test here starts servers (rustac, an HTTP file server) and an app with the real model
pytestmark = pytest.mark.slow

TMS = morecantile.tms.get("WebMercatorQuad")


@pytest.fixture(scope="module")
def stac_client(app_settings, bundle, stac_api: str) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    settings = app_settings.replace(stac_url=stac_api, stac_timeout=5.0, scenes_sync_max=3)
    with TestClient(create_app(settings, bundle), raise_server_exceptions=False) as c:
        yield c


def item_url(stac_api: str, item_id: str) -> str:
    return f"{stac_api}/collections/aerial/items/{item_id}"


def test_search_returns_items_with_cluster_tilejson(stac_client, stac_api: str, sample: Path) -> None:  # type: ignore[no-untyped-def]
    r = stac_client.get("/stac/search", params={"collections": "aerial", "limit": 10})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["type"] == "FeatureCollection" and len(body["features"]) == 4
    linked = [f for f in body["features"] if any(link["rel"] == "cluster-tilejson" for link in f["links"])]
    assert {f["id"] for f in linked} == {"scene-0", "scene-1", "scene-2"}
    href = next(link["href"] for link in linked[0]["links"] if link["rel"] == "cluster-tilejson")
    tj = stac_client.get(href.replace("http://testserver", ""))
    assert tj.status_code == 200 and tj.json()["minzoom"] <= tj.json()["maxzoom"]
    dated = stac_client.get("/stac/search", params={"datetime": "2024-01-15T00:00:00Z/2024-02-15T00:00:00Z"})
    assert [f["id"] for f in dated.json()["features"]] == ["scene-1"]
    empty = stac_client.get("/stac/search", params={"bbox": "-10,-10,-9,-9"})
    assert empty.status_code == 200 and empty.json()["numberReturned"] == 0


def test_item_tiles_match_cog_tiles(stac_client, stac_api: str, sample: Path) -> None:  # type: ignore[no-untyped-def]
    url = item_url(stac_api, "scene-0")
    tj = stac_client.get("/stac/WebMercatorQuad/tilejson.json", params={"url": url, "assets": "visual"}).json()
    assert "assets=visual" in tj["tiles"][0] and "url=" in tj["tiles"][0]
    w, s, e, n = tj["bounds"]
    t = TMS.tile((w + e) / 2, (s + n) / 2, 19)
    item_tile = stac_client.get(
        f"/stac/tiles/WebMercatorQuad/19/{t.x}/{t.y}.npy", params={"url": url, "assets": "visual"}
    )
    cog_tile = stac_client.get(f"/cog/tiles/WebMercatorQuad/19/{t.x}/{t.y}.npy", params={"url": str(sample)})
    assert item_tile.status_code == 200 and cog_tile.status_code == 200
    assert (np.load(io.BytesIO(item_tile.content)) == np.load(io.BytesIO(cog_tile.content))).all()


def test_item_statistics_report_the_sample(stac_client, stac_api: str) -> None:  # type: ignore[no-untyped-def]
    r = stac_client.get("/stac/statistics", params={"url": item_url(stac_api, "scene-0")})
    assert r.status_code == 200, r.text
    body = r.json()
    # the demo image's grid has at most 16 windows (STATS_SAMPLE): all of them are read, so it is exact
    assert 9 <= body["sample"]["windows"] == body["sample"]["of"] <= 16 and body["sample"]["exact"]
    shares = [c["share"] for c in body["clusters"]]
    assert abs(sum(shares) - 1) < 1e-6 and shares == sorted(shares, reverse=True)


def test_scene_clustering_runs_as_a_job_when_large(stac_client) -> None:  # type: ignore[no-untyped-def]
    """4 items > DINOTILES_SCENES_SYNC_MAX (3 here): 202 and a job; the item without a raster is reported."""
    r = stac_client.post("/stac/scenes/cluster", json={"collections": ["aerial"], "limit": 10})
    assert r.status_code == 202, r.text
    href = r.json()["href"].replace("http://testserver", "")
    assert r.headers["location"].endswith(r.json()["job"])
    for _ in range(600):
        job = stac_client.get(href).json()
        if job["status"] not in ("queued", "running"):
            break
        time.sleep(0.5)
    assert job["status"] == "done", job
    assert [s["id"] for s in job["result"]["skipped"]] == ["no-raster"]
    assert len(job["result"]["items"]) == 3
    assert stac_client.get("/stac/jobs/0123").status_code == 404


def test_scene_clustering_synchronous(stac_client) -> None:  # type: ignore[no-untyped-def]
    body = {"datetime": "2024-01-01T00:00:00Z/2024-03-31T00:00:00Z", "limit": 3}
    r = stac_client.post("/stac/scenes/cluster", json=body)
    assert r.status_code == 200, r.text
    result = r.json()
    # three copies of one image: one cluster, every item in it, a representative named
    assert result["k"] == 1 and {i["cluster"] for i in result["items"]} == {0}
    assert result["representatives"]["0"] in {"scene-0", "scene-1", "scene-2"}


@pytest.mark.parametrize(
    ("params", "status", "words"),
    [
        ({"collections": "nope"}, 400, "unknown collection"),
        ({"bbox": "1,2,3"}, 400, "bbox"),
        ({"bbox": "5,5,4,4"}, 400, "bbox"),
        ({"datetime": "yesterday"}, 400, "RFC 3339"),
        ({"datetime": "2024-05-01T00:00:00Z/2024-01-01T00:00:00Z"}, 400, "interval"),
        ({"limit": 0}, 422, "limit"),
    ],
)
def test_bad_searches(stac_client, params: dict, status: int, words: str) -> None:  # type: ignore[no-untyped-def]
    r = stac_client.get("/stac/search", params=params)
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]


def test_item_without_raster_asset_is_400(stac_client, stac_api: str) -> None:  # type: ignore[no-untyped-def]
    r = stac_client.get("/stac/WebMercatorQuad/tilejson.json", params={"url": item_url(stac_api, "no-raster")})
    assert r.status_code == 400 and "no raster asset" in r.json()["detail"]
    missing = stac_client.get("/stac/info", params={"url": item_url(stac_api, "scene-0"), "assets": "thermal"})
    assert missing.status_code == 400 and "thermal" in missing.json()["detail"]


def test_empty_scene_search_is_404(stac_client) -> None:  # type: ignore[no-untyped-def]
    r = stac_client.post("/stac/scenes/cluster", json={"bbox": [-10, -10, -9, -9]})
    assert r.status_code == 404 and "no items" in r.json()["detail"]


def test_stac_api_down_is_502_and_slow_is_504(app_settings, bundle) -> None:  # type: ignore[no-untyped-def]
    down = app_settings.replace(stac_url=f"http://127.0.0.1:{free_port()}", stac_timeout=2.0)
    with TestClient(create_app(down, bundle), raise_server_exceptions=False) as c:
        r = c.get("/stac/search", params={"limit": 1})
        assert r.status_code == 502 and "failed" in r.json()["detail"]
    # a server that accepts the connection and never answers
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    slow = app_settings.replace(stac_url=f"http://127.0.0.1:{silent.getsockname()[1]}", stac_timeout=1.0)
    try:
        with TestClient(create_app(slow, bundle), raise_server_exceptions=False) as c:
            r = c.get("/stac/search", params={"limit": 1})
            assert r.status_code == 504, r.text
    finally:
        silent.close()


def test_malformed_stac_api_is_502(app_settings, bundle, http_server: str, sample: Path) -> None:  # type: ignore[no-untyped-def]
    """A server that answers, but not with STAC (here: a static file server)."""
    bad = app_settings.replace(stac_url=f"{http_server}/{sample.name}", stac_timeout=5.0)
    with TestClient(create_app(bad, bundle), raise_server_exceptions=False) as c:
        r = c.get("/stac/search", params={"limit": 1})
        assert r.status_code == 502, r.text


def test_scenes_cluster_cli_from_a_stac_search(
    stac_api: str, http_server: str, bundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    from dinotiles.cli import main

    monkeypatch.setenv("DINOTILES_STAC_URL", stac_api)
    monkeypatch.setenv("DINOTILES_ALLOWED_HOSTS", http_server.removeprefix("http://"))
    monkeypatch.setenv("DINOTILES_BUNDLE", str(bundle.root))
    out = tmp_path / "scenes.json"
    assert main(["scenes", "cluster", "--collections", "aerial", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert sorted(i["id"] for i in result["items"]) == ["scene-0", "scene-1", "scene-2"]
    assert result["skipped"][0]["id"] == "no-raster" and result["k"] == 1
    assert main(["scenes", "cluster", "--collections", "nope"]) == 2
    assert main(["scenes", "cluster"]) == 2
