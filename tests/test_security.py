"""A hostile client, class by class: each test fails on the code before the security fixes.

Every answer must be a 4xx/5xx JSON with a one-line ``detail``, quickly, and the server must
stay healthy afterwards. Real servers throughout: GDAL reads over real HTTP (Range) servers on
127.0.0.1, a redirecting server in front of a second one, a host that never answers, and a real
uvicorn for what only a socket shows (URL length, /healthz while every worker is busy).
"""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import morecantile
import numpy as np
import pytest
import rasterio
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from rasterio.transform import from_bounds

from dinotiles.core.sources import (
    SourceNotFound,
    resolve_source,
)
from dinotiles.server.app import create_app
from dinotiles.server.settings import Settings
from tests.conftest import crop
from tests.test_limits import URLISH

pytestmark = pytest.mark.slow  # real servers, real weights: the unit tier is tests/test_limits.py

TMS = morecantile.tms.get("WebMercatorQuad")


def assert_json_error(r: httpx.Response, status: int, *words: str) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json"), r.headers
    detail = r.json()["detail"]
    assert isinstance(detail, str) and detail and "Traceback" not in detail
    for word in words:
        assert word in detail, detail
    return detail


# -- servers ---------------------------------------------------------------------------------
class Counting(SimpleHTTPRequestHandler):
    """Static files (Range via the conftest handler's logic is not needed here: GDAL falls back)."""

    hits: list[str]

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.hits.append(f"GET {self.path}")
        super().do_GET()

    def do_HEAD(self) -> None:
        self.hits.append(f"HEAD {self.path}")
        super().do_HEAD()


def serve(handler: type[BaseHTTPRequestHandler], **attrs: object) -> tuple[ThreadingHTTPServer, str]:
    cls = type("H", (handler,), attrs)
    server = ThreadingHTTPServer(("127.0.0.1", 0), cls)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"127.0.0.1:{server.server_address[1]}"


def static_server(directory: Path) -> tuple[ThreadingHTTPServer, str, list[str]]:
    """Plain static files (no Range: GDAL falls back to whole reads), counting every request."""
    hits: list[str] = []

    class Handler(Counting):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(directory), **kwargs)  # type: ignore[arg-type]

    Handler.hits = hits
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"127.0.0.1:{server.server_address[1]}", hits


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory, sample: Path) -> Iterator[dict[str, object]]:
    """A folder of hostile files, served by an allowlisted host, plus a foreign host that must see nothing."""
    root = tmp_path_factory.mktemp("hostile")
    foreign_dir = tmp_path_factory.mktemp("foreign")
    (foreign_dir / "x.tif").write_bytes(sample.read_bytes())
    foreign, foreign_host, foreign_hits = static_server(foreign_dir)

    def vrt(source: str) -> str:
        return (
            '<VRTDataset rasterXSize="64" rasterYSize="64"><SRS>EPSG:3857</SRS>'
            "<GeoTransform>0, 1, 0, 64, 0, -1</GeoTransform>"
            '<VRTRasterBand dataType="Byte" band="1" subClass="VRTRawRasterBand">'
            f'<SourceFilename relativetoVRT="0">{source}</SourceFilename>'
            "<ImageOffset>0</ImageOffset><PixelOffset>1</PixelOffset><LineOffset>64</LineOffset>"
            "</VRTRasterBand></VRTDataset>"
        )

    (root / "passwd.tif").write_text(vrt("/etc/passwd"))
    (root / "passwd.vrt").write_text(vrt("/etc/passwd"))
    (root / "foreign.tif").write_text(vrt(f"/vsicurl/http://{foreign_host}/x.tif"))
    (root / "truncated.tif").write_bytes(sample.read_bytes()[:200])  # cut inside the header
    (root / "cut.tif").write_bytes(sample.read_bytes()[:20_000])  # header whole, pixels missing
    png = root / "image.tif"
    with rasterio.open(sample) as src:
        data = src.read()
    with rasterio.open(png, "w", driver="PNG", width=64, height=64, count=3, dtype="uint8") as dst:
        dst.write(data[:, :64, :64])
    with rasterio.open(root / "nocrs.tif", "w", driver="GTiff", width=64, height=64, count=3, dtype="uint8") as dst:
        dst.write(data[:, :64, :64])
    # a few hundred KB that claims the whole planet at 1 cm: sparse, tiled, almost all blocks absent
    with rasterio.open(
        root / "world.tif",
        "w",
        driver="GTiff",
        width=36000,
        height=18000,
        count=3,
        dtype="uint8",
        crs="EPSG:4326",
        transform=from_bounds(-180, -90, 180, 90, 36000, 18000),
        tiled=True,
        blockxsize=512,
        blockysize=512,
        compress="deflate",
        sparse_ok=True,
    ) as dst:
        dst.write(np.full((3, 512, 512), 120, np.uint8), window=rasterio.windows.Window(0, 0, 512, 512))
    # polar imagery: a real image's pixels placed at 85.5° N (beyond UTM) and in Antarctic polar stereographic
    for name, crs, bounds in (
        ("arctic.tif", "EPSG:4326", (10.0, 85.5, 10.0 + 250 * 0.25 / 8700, 85.5 + 250 * 0.25 / 111_000)),
        ("antarctic.tif", "EPSG:3031", (100_000.0, 200_000.0, 100_062.5, 200_062.5)),
    ):
        with rasterio.open(
            root / name,
            "w",
            driver="GTiff",
            width=250,
            height=250,
            count=3,
            dtype="uint8",
            crs=crs,
            transform=from_bounds(*bounds, 250, 250),
        ) as dst:
            dst.write(data[:, :250, :250])
    item = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": "no-href",
        "geometry": None,
        "properties": {"datetime": "2024-01-01T00:00:00Z"},
        "links": [],
        "assets": {"visual": {"type": "image/tiff; application=geotiff"}},
    }
    (root / "no-href.json").write_text(json.dumps(item))
    item_vrt = {**item, "id": "vrt", "assets": {"visual": {"href": str(root / "passwd.tif"), "type": "image/tiff"}}}
    (root / "vrt-item.json").write_text(json.dumps(item_vrt))
    item_world = {**item, "id": "world", "assets": {"visual": {"href": str(root / "world.tif"), "type": "image/tiff"}}}
    (root / "world-item.json").write_text(json.dumps(item_world))
    server, host, hits = static_server(root)
    yield {
        "root": root,
        "host": host,
        "hits": hits,
        "foreign_host": foreign_host,
        "foreign_hits": foreign_hits,
    }
    server.shutdown()
    foreign.shutdown()


@pytest.fixture(scope="module")
def hostile_settings(app_settings: Settings, hostile: dict) -> Settings:  # type: ignore[type-arg]
    return app_settings.replace(
        local_roots=(*app_settings.local_roots, hostile["root"]),
        allowed_hosts=(*app_settings.allowed_hosts, hostile["host"]),
    )


@pytest.fixture(scope="module")
def hc(hostile_settings: Settings, bundle) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    with TestClient(create_app(hostile_settings, bundle), raise_server_exceptions=False) as c:
        yield c


def healthy(client: TestClient) -> None:
    started = time.monotonic()
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert time.monotonic() - started < 2.0


# -- 1. VRT and other non-GeoTIFF indirection, through every route family ---------------------
ROUTES = [
    "/rgb/preview.npy",
    "/rgb/info",
    "/rgb/statistics",
    "/rgb/tiles/WebMercatorQuad/0/0/0.npy",
    "/rgb/point/0.00001,0.00001",
    "/cog/info",
    "/cog/WebMercatorQuad/tilejson.json",
    "/cog/tiles/WebMercatorQuad/0/0/0.npy",
    "/cog/point/0.00001,0.00001",
]


@pytest.mark.parametrize("where", ["local .tif", "local .vrt", "allowlisted host"])
def test_vrt_never_reads_local_files(hc: TestClient, hostile: dict, where: str) -> None:  # type: ignore[type-arg]
    root: Path = hostile["root"]
    url = {
        "local .tif": str(root / "passwd.tif"),
        "local .vrt": str(root / "passwd.vrt"),
        "allowlisted host": f"http://{hostile['host']}/passwd.tif",
    }[where]
    started = time.monotonic()
    for route in ROUTES:
        r = hc.get(route, params={"url": url})
        assert r.status_code == 400, (route, r.status_code, r.text[:200])
        assert b"root:" not in r.content and "GeoTIFF" in r.json()["detail"]
    r = hc.get("/cog/statistics", params={"url": url, "bbox": "0,0,0.0001,0.0001"})
    assert_json_error(r, 400)
    assert time.monotonic() - started < 20
    healthy(hc)


def test_vrt_via_stac_item_and_render_cli(hc: TestClient, hostile: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    from dinotiles.cli import main

    item = str(hostile["root"] / "vrt-item.json")
    for route in ("/stac/info", "/stac/statistics", "/stac/WebMercatorQuad/tilejson.json"):
        r = hc.get(route, params={"url": item})
        assert_json_error(r, 400, "GeoTIFF")
        assert b"root:" not in r.content
    assert main(["render", str(hostile["root"] / "passwd.tif"), str(tmp_path / "out.tif")]) == 2
    assert not (tmp_path / "out.tif").exists()


def test_vrt_cannot_reach_a_foreign_host(hc: TestClient, hostile: dict) -> None:  # type: ignore[type-arg]
    before = len(hostile["foreign_hits"])
    for url in (str(hostile["root"] / "foreign.tif"), f"http://{hostile['host']}/foreign.tif"):
        for route in ("/rgb/preview.npy", "/cog/info", "/rgb/info"):
            assert_json_error(hc.get(route, params={"url": url}), 400)
    assert len(hostile["foreign_hits"]) == before


# -- 2. redirects off the allowlist ----------------------------------------------------------
class Redirect(BaseHTTPRequestHandler):
    target = ""
    head_ok = False  # answer HEAD 200 and redirect only GET (a host that hides the redirect from probes)

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(302)
        self.send_header("Location", self.target)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_HEAD(self) -> None:
        if self.head_ok:
            self.send_response(200)
            self.send_header("Content-Length", "1000000")
            self.send_header("ETag", '"x"')
            self.end_headers()
        else:
            self.do_GET()


@pytest.mark.parametrize("head_ok", [False, True], ids=["redirects-always", "redirects-only-GET"])
def test_redirect_off_the_allowlist_is_not_followed(
    hostile_settings: Settings, bundle, hostile: dict, head_ok: bool
) -> None:  # type: ignore[no-untyped-def,type-arg]
    redirector, rhost = serve(Redirect, target=f"http://{hostile['foreign_host']}/x.tif", head_ok=head_ok)
    settings = hostile_settings.replace(allowed_hosts=(*hostile_settings.allowed_hosts, rhost))
    before = len(hostile["foreign_hits"])
    try:
        with TestClient(create_app(settings, bundle), raise_server_exceptions=False) as c:
            for route in ("/cog/info", "/rgb/info", "/rgb/preview.npy", "/cog/tiles/WebMercatorQuad/19/1/1.png"):
                r = c.get(route, params={"url": f"http://{rhost}/x.tif"})
                # the probe sees the 302 (403, naming the redirect); a GET-only redirect is cut by the egress proxy
                assert r.status_code == 403, (route, r.text)
                assert hostile["foreign_host"] in r.json()["detail"] or "redirect" in r.json()["detail"]
                assert r.headers["content-type"].startswith("application/json")
            healthy(c)
    finally:
        redirector.shutdown()
    assert len(hostile["foreign_hits"]) == before, hostile["foreign_hits"]


def test_redirect_within_the_allowlist_is_followed(
    app_settings: Settings, bundle, http_server: str, sample: Path
) -> None:  # type: ignore[no-untyped-def]
    redirector, rhost = serve(Redirect, target=f"{http_server}/{sample.name}")
    settings = app_settings.replace(allowed_hosts=(*app_settings.allowed_hosts, rhost))
    try:
        with TestClient(create_app(settings, bundle), raise_server_exceptions=False) as c:
            r = c.get("/cog/info", params={"url": f"http://{rhost}/{sample.name}"})
            assert r.status_code == 200, r.text
    finally:
        redirector.shutdown()


# -- 3. work that explodes before a limit applies ------------------------------------------------
def test_whole_world_raster_is_refused_at_open(hc: TestClient, hostile: dict) -> None:  # type: ignore[type-arg]
    import resource

    world = str(hostile["root"] / "world.tif")
    assert (hostile["root"] / "world.tif").stat().st_size < 1_000_000
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    for route in ("/cog/info", "/cog/WebMercatorQuad/tilejson.json", "/cog/tiles/WebMercatorQuad/2/1/1.png"):
        assert_json_error(hc.get(route, params={"url": world}), 400, "DINOTILES_MAX_SCENE_PATCHES")
    item = str(hostile["root"] / "world-item.json")
    assert_json_error(hc.get("/stac/statistics", params={"url": item}), 400, "DINOTILES_MAX_SCENE_PATCHES")
    # TiTiler's own routes: no overviews, so a preview would touch 648 Mpx
    assert_json_error(hc.get("/rgb/preview.npy", params={"url": world}), 400, "DINOTILES_MAX_READ_PIXELS")
    assert time.monotonic() - started < 10
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 300_000  # KiB: no 0.6 GB/s growth
    healthy(hc)


@pytest.mark.parametrize("bbox", ["-180,-10,180,10", "170,-1,-170,1", "-180,80,180,90"])
def test_huge_bbox_hits_the_area_limit(client: TestClient, sample: Path, bbox: str) -> None:
    started = time.monotonic()
    assert_json_error(
        client.get("/cog/statistics", params={"url": str(sample), "bbox": bbox}), 400, "DINOTILES_MAX_STATS_AREA_M2"
    )
    assert time.monotonic() - started < 5


def test_statistics_window_budget_is_checked_first(app_settings: Settings, bundle, sample: Path) -> None:  # type: ignore[no-untyped-def]
    settings = app_settings.replace(max_request_windows=1, max_stats_area_m2=1e9)
    with TestClient(create_app(settings, bundle), raise_server_exceptions=False) as c:
        b = c.get("/cog/WebMercatorQuad/tilejson.json", params={"url": str(sample)}).json()["bounds"]
        r = c.get("/cog/statistics", params={"url": str(sample), "bbox": ",".join(map(str, b))})
        assert_json_error(r, 400, "DINOTILES_MAX_REQUEST_WINDOWS")
        assert c.app.state.engine.windows_encoded == 0  # type: ignore[attr-defined]


# -- 4. output size -------------------------------------------------------------------------
def test_output_size_is_capped_on_every_rgb_route(client: TestClient, sample: Path) -> None:
    url = str(sample)
    b = client.get("/cog/WebMercatorQuad/tilejson.json", params={"url": url}).json()["bounds"]
    t = TMS.tile((b[0] + b[2]) / 2, (b[1] + b[3]) / 2, 18)
    bbox = ",".join(map(str, b))
    started = time.monotonic()
    for path, params in (
        (f"/rgb/tiles/WebMercatorQuad/18/{t.x}/{t.y}.npy", {"tilesize": 8192}),
        (f"/rgb/bbox/{bbox}/10000x10000.npy", {}),
        ("/rgb/preview.npy", {"width": 10000, "height": 10000}),
        ("/rgb/preview.npy", {"width": 9000, "height": 10}),
    ):
        assert_json_error(client.get(path, params={"url": url, **params}), 400, "DINOTILES_MAX_OUTPUT_SIZE")
    assert time.monotonic() - started < 10
    ok = client.get(f"/rgb/tiles/WebMercatorQuad/18/{t.x}/{t.y}.npy", params={"url": url, "tilesize": 512})
    assert ok.status_code == 200 and np.load(io.BytesIO(ok.content)).shape[-1] == 512


# -- 5. slow hosts, deadlines, and /healthz that never waits -------------------------------------
class Silent(BaseHTTPRequestHandler):
    """Accepts, then says nothing for a long time (a slow or malicious host)."""

    head_fast = False

    def log_message(self, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        if self.head_fast:
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            return
        time.sleep(20)

    def do_GET(self) -> None:
        time.sleep(20)


class UvicornThread:
    """A real uvicorn serving an app on 127.0.0.1, in this process (shares the test's bundle)."""

    def __init__(self, app: object) -> None:
        import uvicorn

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        sock.close()
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", h11_max_incomplete_event_size=65536
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        from tests.conftest import wait_for

        self.thread.start()
        wait_for(f"http://127.0.0.1:{self.port}/healthz", 60)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *args: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.mark.parametrize("head_fast", [False, True], ids=["silent", "slow-reads"])
def test_slow_host_gets_504_and_healthz_stays_fast(hostile_settings: Settings, bundle, head_fast: bool) -> None:  # type: ignore[no-untyped-def]
    silent, shost = serve(Silent, head_fast=head_fast)
    settings = hostile_settings.replace(
        allowed_hosts=(*hostile_settings.allowed_hosts, shost),
        http_timeout=1.0,
        http_connect_timeout=1.0,
        request_timeout=4.0,
    )
    try:
        with UvicornThread(create_app(settings, bundle)) as base, httpx.Client(base_url=base, timeout=30) as http:
            url = f"http://{shost}/slow.tif"

            def slow(_: int) -> tuple[int, float, str]:
                start = time.monotonic()
                r = http.get("/cog/info", params={"url": url})
                return r.status_code, time.monotonic() - start, r.headers.get("content-type", "")

            with ThreadPoolExecutor(48) as pool:
                futures = [pool.submit(slow, i) for i in range(48)]
                time.sleep(0.5)
                start = time.monotonic()
                assert http.get("/healthz").status_code == 200
                assert time.monotonic() - start < 3.0  # measured ~0.01 s alone; the bound allows a loaded CI machine
                results = [f.result() for f in futures]
            codes = sorted({code for code, _, _ in results})
            assert codes == [504] and all(c.startswith("application/json") for _, _, c in results), (codes, results)
            assert max(seconds for _, seconds, _ in results) < 15
    finally:
        silent.shutdown()


def test_request_deadline_stops_a_long_request(app_settings: Settings, bundle, sample: Path) -> None:  # type: ignore[no-untyped-def]
    """A statistics request that needs more encoding than its deadline allows stops with 504."""
    settings = app_settings.replace(request_timeout=0.5, max_stats_area_m2=1e9, cache_bytes=0)
    with TestClient(create_app(settings, bundle), raise_server_exceptions=False) as c:
        b = c.get("/cog/WebMercatorQuad/tilejson.json", params={"url": str(sample)}).json()["bounds"]
        started = time.monotonic()
        r = c.get("/cog/statistics", params={"url": str(sample), "bbox": ",".join(map(str, b))})
        assert_json_error(r, 504, "DINOTILES_REQUEST_TIMEOUT")
        assert time.monotonic() - started < 6
        windows = c.app.state.engine.windows_encoded  # type: ignore[attr-defined]
        info = c.get("/cog/info", params={"url": str(sample)}).json()
        assert windows < info["analysis"]["windows"][0] * info["analysis"]["windows"][1]


# -- 6. concurrency: a bounded inference queue --------------------------------------------------
def test_inference_queue_is_bounded_with_503(app_settings: Settings, bundle, oam_image: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    image = crop(oam_image, tmp_path / "queue.tif", 3000)
    settings = app_settings.replace(local_roots=(tmp_path,), max_queue=2, cache_bytes=0)
    with TestClient(create_app(settings, bundle), raise_server_exceptions=False) as c:
        b = c.get("/cog/WebMercatorQuad/tilejson.json", params={"url": str(image)}).json()["bounds"]
        tiles = list(TMS.tiles(*b, zooms=[19]))[:8]

        def get(t: morecantile.Tile) -> httpx.Response:
            return c.get(f"/cog/tiles/WebMercatorQuad/19/{t.x}/{t.y}.png", params={"url": str(image)})

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(get, tiles))
        codes = [r.status_code for r in answers]
        assert 503 in codes and 200 in codes, codes
        assert set(codes) <= {200, 404, 503}, codes
        for r in answers:
            if r.status_code == 503:
                assert int(r.headers["Retry-After"]) >= 1
                assert "DINOTILES_MAX_QUEUE" in r.json()["detail"]
        assert c.app.state.engine.queue.reserved == 0  # type: ignore[attr-defined]
        healthy(c)


# -- 7. client mistakes are 4xx, never 500 ---------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    [
        "http://[::1:8765/x.tif",
        "http://127.0.0.1:99999/x.tif",
        "http://127.0.0.1:abc/x.tif",
        "http://user:pw@127.0.0.1/x.tif",
        "s3://127.0.0.1:8765/x.tif",
        "relative/path.tif",
    ],
)
def test_malformed_urls_are_4xx(client: TestClient, url: str) -> None:
    for route in ("/cog/info", "/rgb/info"):
        r = client.get(route, params={"url": url})
        assert r.status_code in (400, 403), r.text
        assert "/work" not in r.text and "Traceback" not in r.text


def test_upper_case_scheme_is_a_url_not_a_path(client: TestClient, http_server: str, sample: Path) -> None:
    upper = http_server.replace("http://", "HTTP://") + f"/{sample.name}"
    r = client.get("/cog/info", params={"url": upper})
    assert r.status_code == 200, r.text
    r = client.get("/cog/info", params={"url": upper.replace("127.0.0.1", "example.com")})
    assert_json_error(r, 403)


def test_polar_images_get_a_polar_grid(hc: TestClient, hostile: dict) -> None:  # type: ignore[type-arg]
    arctic = str(hostile["root"] / "arctic.tif")
    info = hc.get("/cog/info", params={"url": arctic})
    assert info.status_code == 200, info.text
    assert info.json()["analysis"]["crs"] == "EPSG:32661"
    tj = hc.get("/cog/WebMercatorQuad/tilejson.json", params={"url": arctic})
    assert tj.status_code in (200, 400), tj.text
    antarctic = hc.get("/cog/info", params={"url": str(hostile["root"] / "antarctic.tif")})
    assert antarctic.status_code == 200, antarctic.text
    assert antarctic.json()["analysis"]["crs"] == "EPSG:32761"  # 88° S in Antarctic stereographic: onto UPS
    for route in ("/cog/WorldCRS84Quad/tilejson.json", "/rgb/info"):
        r = hc.get(route, params={"url": arctic})
        assert r.status_code < 500, (route, r.text)


@pytest.mark.parametrize(
    ("name", "routes"),
    [
        ("truncated.tif", ("/cog/info", "/rgb/info", "/rgb/preview.npy")),
        ("cut.tif", ("/rgb/preview.npy", "/rgb/tiles/WebMercatorQuad/0/0/0.npy")),
        ("image.tif", ("/cog/info", "/rgb/info", "/rgb/preview.npy")),
        ("nocrs.tif", ("/cog/info", "/rgb/info", "/rgb/preview.npy", "/rgb/tiles/WebMercatorQuad/0/0/0.png")),
    ],
)
def test_broken_rasters_are_400_on_every_route(
    hc: TestClient, hostile: dict, name: str, routes: tuple[str, ...]
) -> None:  # type: ignore[type-arg]
    for route in routes:
        assert_json_error(hc.get(route, params={"url": str(hostile["root"] / name)}), 400)


def test_stac_asset_without_href_is_400(hc: TestClient, hostile: dict) -> None:  # type: ignore[type-arg]
    r = hc.get("/stac/info", params={"url": str(hostile["root"] / "no-href.json")})
    assert_json_error(r, 400, "href")


@pytest.mark.parametrize("params", [{"bidx": 9}, {"expression": "b1/b99"}, {"bidx": 0}, {"expression": "b4*2"}])
def test_band_out_of_range_is_400(client: TestClient, sample: Path, params: dict) -> None:  # type: ignore[type-arg]
    for route in ("/rgb/preview.npy", "/rgb/point/0,0", "/rgb/statistics", "/rgb/tiles/WebMercatorQuad/0/0/0.npy"):
        r = client.get(route, params={"url": str(sample), **params})
        assert r.status_code in (400, 422), (route, r.text)
        assert r.headers["content-type"].startswith("application/json")


# -- 8. the low ones ------------------------------------------------------------------------------
def test_head_is_answered_like_get_without_a_body(client: TestClient, sample: Path) -> None:
    for path in ("/healthz", "/cog/info", "/cog/WebMercatorQuad/tilejson.json"):
        get = client.get(path, params={"url": str(sample)})
        head = client.head(path, params={"url": str(sample)})
        assert head.status_code == get.status_code == 200
        assert head.content == b""
        assert head.headers["content-type"] == get.headers["content-type"]


def test_long_url_is_414_json_over_a_real_socket(app_settings: Settings, bundle) -> None:  # type: ignore[no-untyped-def]
    with UvicornThread(create_app(app_settings, bundle)) as base:
        r = httpx.get(f"{base}/cog/info", params={"url": "/" + "a" * 20_000}, timeout=10)
        assert_json_error(r, 414, "DINOTILES_MAX_URL_LENGTH")
        assert r.headers["x-request-id"]
        assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200


def test_oversized_body_is_413(client: TestClient) -> None:
    r = client.post(
        "/stac/scenes/cluster", content=b"{" + b" " * 2_000_000 + b"}", headers={"content-type": "application/json"}
    )
    assert_json_error(r, 413, "DINOTILES_MAX_BODY_BYTES")


def test_remote_cache_key_follows_the_validators(app_settings: Settings, tmp_path: Path, sample: Path) -> None:
    (tmp_path / "a.tif").write_bytes(sample.read_bytes())
    server, host, _ = static_server(tmp_path)
    settings = app_settings.replace(allowed_hosts=(host,), revalidate_seconds=0.01).source_policy()
    try:
        first = resolve_source(f"http://{host}/a.tif", settings)
        time.sleep(0.05)
        assert resolve_source(f"http://{host}/a.tif", settings).key == first.key
        (tmp_path / "a.tif").write_bytes(sample.read_bytes()[:-10])  # a changed object: new length, new mtime
        time.sleep(0.05)
        assert resolve_source(f"http://{host}/a.tif", settings).key != first.key
        with pytest.raises(SourceNotFound):
            resolve_source(f"http://{host}/missing.tif", settings)
    finally:
        server.shutdown()


# -- fuzz -----------------------------------------------------------------------------------------


@hsettings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(url=URLISH, bbox=st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=0, max_size=5))
def test_fuzz_routes_never_answer_5xx(client: TestClient, url: str, bbox: list[float]) -> None:
    text = ",".join(map(str, bbox))
    for route, params in (
        ("/cog/info", {"url": url}),
        ("/rgb/info", {"url": url}),
        ("/cog/statistics", {"url": url, "bbox": text}),
        ("/stac/info", {"url": url}),
    ):
        r = client.get(route, params=params)
        assert r.status_code < 500, (route, params, r.text)


# -- the hostile probe's findings, each closed in the shared mechanism -----------------------------
def test_buffer_counts_toward_the_output_limit(client: TestClient, sample: Path) -> None:
    url = str(sample)
    b = client.get("/cog/WebMercatorQuad/tilejson.json", params={"url": url}).json()["bounds"]
    t = TMS.tile((b[0] + b[2]) / 2, (b[1] + b[3]) / 2, 19)
    path = f"/rgb/tiles/WebMercatorQuad/19/{t.x}/{t.y}.npy"
    started = time.monotonic()
    for buffer in (3000, 100_000):
        assert_json_error(client.get(path, params={"url": url, "buffer": buffer}), 400, "DINOTILES_MAX_OUTPUT_SIZE")
    assert time.monotonic() - started < 5
    ok = client.get(path, params={"url": url, "buffer": 8})
    assert ok.status_code == 200 and np.load(io.BytesIO(ok.content)).shape[-1] == 256 + 16


def test_no_proxy_in_the_environment_stops_start_up(app_settings: Settings, bundle, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from dinotiles.core.egress import EgressUnsafe

    monkeypatch.setenv("NO_PROXY", "127.0.0.1,169.254.169.254")
    with pytest.raises(EgressUnsafe, match="NO_PROXY"):
        create_app(app_settings, bundle)


def test_egress_proxy_serves_only_this_process_and_checks_every_target(hc: TestClient, hostile: dict) -> None:  # type: ignore[type-arg]
    from dinotiles.core import egress

    proxy = next(iter(egress._PROXIES.values()))
    host, port = proxy.server_address[:2]

    def ask(lines: list[str]) -> bytes:
        with socket.create_connection((host, port), timeout=5) as s:
            s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
            return s.recv(200)

    allowed = hostile["host"]
    assert ask([f"GET http://{allowed}/passwd.tif HTTP/1.1", f"Host: {allowed}"]).startswith(b"HTTP/1.1 407")
    auth = f"Proxy-Authorization: {proxy.auth}"
    assert ask([f"CONNECT {allowed}:1 HTTP/1.1", auth]).startswith(b"HTTP/1.1 400")  # host:port:port
    before = len(hostile["foreign_hits"])
    answer = ask([f"GET http://{allowed}/passwd.tif HTTP/1.1", f"Host: {hostile['foreign_host']}", auth])
    assert answer.startswith(b"HTTP/1.") and len(hostile["foreign_hits"]) == before  # Host rewritten, not obeyed
    assert ask([f"GET http://{hostile['foreign_host']}/x.tif HTTP/1.1", auth]).startswith(b"HTTP/1.1 403")
    assert len(hostile["foreign_hits"]) == before


def test_huge_internal_blocks_are_refused_at_open(hc: TestClient, hostile: dict) -> None:  # type: ignore[type-arg]
    path = hostile["root"] / "bigblock.tif"
    if not path.exists():
        with rasterio.open(
            path,
            "w",
            driver="GTiff",
            width=16384,
            height=16384,
            count=1,
            dtype="uint8",
            crs="EPSG:3857",
            transform=from_bounds(0, 0, 4096, 4096, 16384, 16384),
            tiled=True,
            blockxsize=16384,
            blockysize=16384,
            compress="deflate",
        ) as dst:
            dst.write(np.zeros((1, 16384, 16384), np.uint8))
    assert path.stat().st_size < 2_000_000
    started = time.monotonic()
    for route in ("/rgb/tiles/WebMercatorQuad/19/262144/262143.png", "/rgb/info", "/cog/info"):
        assert_json_error(hc.get(route, params={"url": str(path)}), 400, "retile")
    assert time.monotonic() - started < 5


class BigOrSlowItems(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        try:
            if self.path.startswith("/huge"):
                self.wfile.write(b'{"type": "Feature", "x": "' + b"a" * 12_000_000 + b'"}')
            else:  # a trickle: one byte a second
                for _ in range(60):
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    time.sleep(1)
        except OSError:
            pass


def test_stac_item_fetch_is_bounded_in_bytes_and_time(app_settings: Settings, bundle) -> None:  # type: ignore[no-untyped-def]
    server, host = serve(BigOrSlowItems)
    settings = app_settings.replace(allowed_hosts=(*app_settings.allowed_hosts, host), stac_timeout=2.0)
    try:
        with TestClient(create_app(settings, bundle), raise_server_exceptions=False) as c:
            started = time.monotonic()
            assert_json_error(c.get("/stac/info", params={"url": f"http://{host}/huge"}), 400, "bytes")
            assert_json_error(c.get("/stac/info", params={"url": f"http://{host}/trickle"}), 504)
            assert time.monotonic() - started < 15
    finally:
        server.shutdown()


def test_remote_items_may_not_name_local_files(app_settings: Settings, bundle, sample: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    item = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": "x",
        "geometry": None,
        "links": [],
        "properties": {"datetime": "2024-01-01T00:00:00Z"},
        "assets": {"visual": {"href": str(sample), "type": "image/tiff"}},
    }
    (tmp_path / "item.json").write_text(json.dumps(item))
    server, host, _ = static_server(tmp_path)
    settings = app_settings.replace(allowed_hosts=(*app_settings.allowed_hosts, host))
    try:
        with TestClient(create_app(settings, bundle), raise_server_exceptions=False) as c:
            r = c.get("/stac/info", params={"url": f"http://{host}/item.json"})
            assert_json_error(r, 400, "local path")
    finally:
        server.shutdown()


def ranged_server(handler: type, directory: Path) -> tuple[ThreadingHTTPServer, str]:
    """A Range-capable static server over ``directory`` with ``handler``'s behaviour."""

    class Bound(handler):  # type: ignore[misc,valid-type]
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(directory), **kwargs)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Bound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"127.0.0.1:{server.server_address[1]}"


def test_a_changed_remote_cog_is_read_anew(
    app_settings: Settings, bundle, sample: Path, rasters: dict, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def,type-arg]
    from tests.conftest import RangeHandler

    (tmp_path / "cur.tif").write_bytes(sample.read_bytes())

    server, host = ranged_server(RangeHandler, tmp_path)
    settings = app_settings.replace(allowed_hosts=(host,), revalidate_seconds=0.01)
    url = f"http://{host}/cur.tif"
    try:
        with TestClient(create_app(settings, bundle), raise_server_exceptions=False) as c:
            first = c.get("/rgb/info", params={"url": url})
            assert first.status_code == 200 and first.json()["count"] == 3
            (tmp_path / "cur.tif").write_bytes(rasters["gray"].read_bytes())  # another object, other size
            time.sleep(1.1)  # Last-Modified has one-second resolution
            second = c.get("/rgb/info", params={"url": url})
            assert second.status_code == 200, second.text
            assert second.json()["count"] == 1  # GDAL's cached header of the old object was dropped
    finally:
        server.shutdown()


def test_weak_sources_get_their_identity_from_the_file(
    app_settings: Settings, bundle, sample: Path, rasters: dict, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def,type-arg]
    """No ETag, no Last-Modified, same length: the tile's ETag still changes with the content."""
    a, b = sample.read_bytes(), rasters["half_nodata"].read_bytes()
    size = max(len(a), len(b))
    a, b = a + b"\0" * (size - len(a)), b + b"\0" * (size - len(b))  # TIFF readers ignore trailing bytes
    (tmp_path / "w.tif").write_bytes(a)

    from tests.conftest import RangeHandler

    class NoValidators(RangeHandler):
        def send_header(self, keyword: str, value: str) -> None:
            if keyword.lower() not in ("last-modified", "etag"):
                super().send_header(keyword, value)

    server, host = ranged_server(NoValidators, tmp_path)
    settings = app_settings.replace(allowed_hosts=(host,), revalidate_seconds=0.01)
    url = f"http://{host}/w.tif"
    try:
        with TestClient(create_app(settings, bundle), raise_server_exceptions=False) as c:
            bounds = c.get("/cog/WebMercatorQuad/tilejson.json", params={"url": url}).json()["bounds"]
            t = TMS.tile((bounds[0] + bounds[2]) / 2, (bounds[1] + bounds[3]) / 2, 17)
            path = f"/cog/tiles/WebMercatorQuad/17/{t.x}/{t.y}.png"
            first = c.get(path, params={"url": url})
            assert first.status_code == 200 and int(first.headers["cache-control"].split("=")[1]) <= 1
            (tmp_path / "w.tif").write_bytes(b)
            time.sleep(0.05)
            second = c.get(path, params={"url": url})
            assert second.status_code == 200 and second.headers["etag"] != first.headers["etag"]
    finally:
        server.shutdown()


def test_chunked_oversized_body_is_413_and_rgb_refuses_unknown_parameters(
    app_settings: Settings, bundle, sample: Path
) -> None:  # type: ignore[no-untyped-def]
    with UvicornThread(create_app(app_settings, bundle)) as base:

        def body() -> Iterator[bytes]:
            yield b"{"
            for _ in range(20):
                yield b" " * 100_000
            yield b"}"

        r = httpx.post(f"{base}/stac/scenes/cluster", content=body(), headers={"content-type": "application/json"})
        assert_json_error(r, 413, "DINOTILES_MAX_BODY_BYTES")
        unknown = httpx.get(f"{base}/rgb/info", params={"url": str(sample), "foo": "1"})
        assert unknown.status_code == 422 and "foo" in unknown.text
        star = httpx.get(
            f"{base}/cog/tiles/WebMercatorQuad/19/1/1.png", params={"url": str(sample)}, headers={"If-None-Match": "*"}
        )
        assert star.status_code == 404  # "*" is no reason to skip the work and answer 304
