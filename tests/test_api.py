"""TiTiler conventions and the HTTP behaviour web maps need, each checked against a real answer.

tilesize, WMTS read by OWSLib, OGC API Tiles, map.html, TiTiler's point shape, unsupported
parameters refused, STAC items by id (rustac serve), relative hrefs, attribution, CORS (and a
MapLibre page on another origin in Chromium), ETag/304 without inference, Cache-Control, gzip,
Server-Timing, OpenAPI completeness and a schemathesis run.
"""

from __future__ import annotations

import io
import json
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import morecantile
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from dinotiles.server.app import create_app
from tests.test_stac import item_url, stac_client  # noqa: F401  (fixtures; stac_api is in conftest)

pytestmark = pytest.mark.slow  # the real app with real weights

TMS = morecantile.tms.get("WebMercatorQuad")
ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def centre_tile(client: TestClient, url: str, z: int = 19, route: str = "/cog") -> morecantile.Tile:
    b = client.get(f"{route}/WebMercatorQuad/tilejson.json", params={"url": url}).json()["bounds"]
    return TMS.tile((b[0] + b[2]) / 2, (b[1] + b[3]) / 2, z)


# -- TiTiler conventions -----------------------------------------------------------------------
def test_tilesize_parameter_and_scale_alias(client: TestClient, sample: Path) -> None:
    url = str(sample)
    t = centre_tile(client, url)
    sized = client.get(f"/cog/tiles/WebMercatorQuad/19/{t.x}/{t.y}.png", params={"url": url, "tilesize": 512})
    alias = client.get(f"/cog/tiles/WebMercatorQuad/19/{t.x}/{t.y}@2x.png", params={"url": url})
    plain = client.get(f"/cog/tiles/WebMercatorQuad/19/{t.x}/{t.y}.png", params={"url": url})
    assert Image.open(io.BytesIO(sized.content)).size == (512, 512)
    assert Image.open(io.BytesIO(plain.content)).size == (256, 256)
    assert sized.content == alias.content
    assert (
        client.get(f"/cog/tiles/WebMercatorQuad/19/{t.x}/{t.y}", params={"url": url, "tilesize": 9000}).status_code
        == 422
    )
    tj = client.get("/cog/WebMercatorQuad/tilejson.json", params={"url": url, "tilesize": 512}).json()
    assert "tilesize=512" in tj["tiles"][0]


@pytest.mark.parametrize(
    ("route", "params"),
    [
        ("/cog/tiles/WebMercatorQuad/19/{x}/{y}.png", {"colormap_name": "viridis"}),
        ("/cog/tiles/WebMercatorQuad/19/{x}/{y}.png", {"rescale": "0,255", "bidx": "1"}),
        ("/cog/WebMercatorQuad/tilejson.json", {"expression": "b1*2"}),
        ("/cog/info", {"bidx": "1"}),
        ("/cog/point/{lon},{lat}", {"colormap_name": "none"}),
        ("/cog/statistics", {"bbox": "{bbox}", "max_size": "1024"}),
    ],
)
def test_unsupported_parameters_are_422_naming_them(client: TestClient, sample: Path, route: str, params: dict) -> None:  # type: ignore[type-arg]
    url = str(sample)
    t = centre_tile(client, url)
    b = client.get("/cog/WebMercatorQuad/tilejson.json", params={"url": url}).json()["bounds"]
    path = route.format(x=t.x, y=t.y, lon=(b[0] + b[2]) / 2, lat=(b[1] + b[3]) / 2)
    query = {k: v.format(bbox=",".join(map(str, b))) for k, v in params.items()}
    r = client.get(path, params={"url": url, **query})
    assert r.status_code == 422, r.text
    for name in params:
        if name != "bbox":
            assert name in r.json()["detail"] or name in json.dumps(r.json()["errors"])


def test_wmts_is_complete_and_owslib_reads_it(client: TestClient, sample: Path) -> None:
    from owslib.wmts import WebMapTileService

    url = str(sample)
    r = client.get("/cog/WMTSCapabilities.xml", params={"url": url})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/xml")
    assert "max-age" in r.headers["cache-control"]
    wmts = WebMapTileService("http://testserver/cog/WMTSCapabilities.xml", xml=r.content)
    assert wmts.identification.type == "OGC WMTS" and wmts.provider.name == "dinotiles"
    assert {op.name for op in wmts.operations} >= {"GetCapabilities", "GetTile"}
    layer = wmts.contents["clusters"]
    tj = client.get("/cog/WebMercatorQuad/tilejson.json", params={"url": url}).json()
    assert layer.boundingBoxWGS84 == pytest.approx(tuple(tj["bounds"]), abs=1e-9)
    link = layer.tilematrixsetlinks["WebMercatorQuad"]
    zooms = sorted(int(z) for z in link.tilematrixlimits)
    assert zooms == list(range(tj["minzoom"], tj["maxzoom"] + 1))
    template = layer.resourceURLs[0]["template"]
    assert "{TileMatrix}" in template and "service=" not in template.lower() and "request=" not in template.lower()
    # the template, filled from the limits, is a real tile
    z = tj["maxzoom"]
    lim = link.tilematrixlimits[str(z)]
    tile_url = (
        template.replace("{TileMatrix}", str(z))
        .replace("{TileCol}", str((lim.mintilecol + lim.maxtilecol) // 2))
        .replace("{TileRow}", str((lim.mintilerow + lim.maxtilerow) // 2))
    )
    assert client.get(tile_url.replace("http://testserver", "")).status_code == 200
    assert wmts.tilematrixsets["WebMercatorQuad"].crs.endswith("3857")
    same = client.get("/cog/WebMercatorQuad/WMTSCapabilities.xml", params={"url": url})
    assert same.status_code == 200 and b"clusters" in same.content


def test_ogc_tiles_routes_and_map(client: TestClient, sample: Path) -> None:
    url = str(sample)
    sets = client.get("/cog/tiles", params={"url": url})
    assert sets.status_code == 200
    assert any("WebMercatorQuad" in s["links"][0]["href"] for s in sets.json()["tilesets"])
    one = client.get("/cog/tiles/WebMercatorQuad", params={"url": url}).json()
    tj = client.get("/cog/WebMercatorQuad/tilejson.json", params={"url": url}).json()
    limits = {int(m["tileMatrix"]) for m in one["tileMatrixSetLimits"]}
    assert limits == set(range(tj["minzoom"], tj["maxzoom"] + 1))
    page = client.get("/cog/WebMercatorQuad/map.html", params={"url": url})
    assert page.status_code == 200 and "/static/leaflet/leaflet.js" in page.text and "unpkg" not in page.text
    assert client.get("/static/leaflet/leaflet.js").status_code == 200


def test_point_has_titilers_shape_plus_the_cluster(client: TestClient, sample: Path) -> None:
    url = str(sample)
    b = client.get("/cog/WebMercatorQuad/tilejson.json", params={"url": url}).json()["bounds"]
    r = client.get(f"/cog/point/{(b[0] + b[2]) / 2},{(b[1] + b[3]) / 2}", params={"url": url}).json()
    assert r["band_names"] == ["cluster"] and r["values"] == [r["cluster"]]
    legend = client.get("/cog/legend").json()
    assert r["color"] == legend["clusters"][r["cluster"]]["color"]


# -- STAC items by id, relative hrefs, attribution -----------------------------------------------
def test_stac_items_by_collection_and_id(stac_client: TestClient, stac_api: str, sample: Path) -> None:  # noqa: F811
    base = "/stac/collections/aerial/items/scene-0"
    tj = stac_client.get(f"{base}/WebMercatorQuad/tilejson.json")
    assert tj.status_code == 200, tj.text
    by_url = stac_client.get(
        "/stac/WebMercatorQuad/tilejson.json", params={"url": item_url(stac_api, "scene-0")}
    ).json()
    assert tj.json()["bounds"] == by_url["bounds"] and tj.json()["minzoom"] == by_url["minzoom"]
    assert tj.json()["tiles"][0].startswith("http://testserver/stac/collections/aerial/items/scene-0/tiles/")
    b = tj.json()["bounds"]
    t = TMS.tile((b[0] + b[2]) / 2, (b[1] + b[3]) / 2, 19)
    tile = stac_client.get(f"{base}/tiles/WebMercatorQuad/19/{t.x}/{t.y}.npy")
    cog = stac_client.get(f"/cog/tiles/WebMercatorQuad/19/{t.x}/{t.y}.npy", params={"url": str(sample)})
    assert tile.status_code == 200 and np.array_equal(
        np.load(io.BytesIO(tile.content)), np.load(io.BytesIO(cog.content))
    )
    for route in ("/info", "/statistics", "/WMTSCapabilities.xml", f"/point/{(b[0] + b[2]) / 2},{(b[1] + b[3]) / 2}"):
        assert stac_client.get(base + route).status_code == 200, route
    missing = stac_client.get("/stac/collections/aerial/items/nope/WebMercatorQuad/tilejson.json")
    assert missing.status_code in (400, 404) and missing.json()["detail"]
    assert stac_client.get("/stac/collections/aerial/items/a%2Fb/info").status_code in (404, 422)


def test_relative_asset_hrefs_and_attribution(client: TestClient, sample: Path) -> None:
    item = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": "static",
        "collection": "openaerialmap",
        "geometry": None,
        "properties": {
            "datetime": "2024-01-01T00:00:00Z",
            "providers": [{"name": "Drone Club", "roles": ["producer"]}],
        },
        "links": [],
        "assets": {"visual": {"href": f"./{sample.name}", "type": "image/tiff; application=geotiff"}},
    }
    path = sample.parent / "static-item.json"
    path.write_text(json.dumps(item))
    try:
        tj = client.get("/stac/WebMercatorQuad/tilejson.json", params={"url": str(path)})
        assert tj.status_code == 200, tj.text
        assert "Drone Club" in tj.json()["attribution"] and "CC BY 4.0" in tj.json()["attribution"]
        wmts = client.get("/stac/WMTSCapabilities.xml", params={"url": str(path)})
        assert b"Drone Club" in wmts.content
    finally:
        path.unlink()


# -- HTTP behaviour --------------------------------------------------------------------------------
def test_cors_preflight_and_headers(client: TestClient, sample: Path) -> None:
    t = centre_tile(client, str(sample))
    path = f"/cog/tiles/WebMercatorQuad/19/{t.x}/{t.y}.png"
    pre = client.options(path, headers={"Origin": "http://maps.example", "Access-Control-Request-Method": "GET"})
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] in ("*", "http://maps.example")
    r = client.get(path, params={"url": str(sample)}, headers={"Origin": "http://maps.example"})
    assert r.headers["access-control-allow-origin"] in ("*", "http://maps.example")
    assert "etag" in r.headers["access-control-expose-headers"].lower()


def test_etag_304_costs_no_inference(app_settings, bundle, sample: Path) -> None:  # type: ignore[no-untyped-def]
    with TestClient(create_app(app_settings.replace(cache_bytes=0), bundle)) as c:
        t = centre_tile(c, str(sample))
        path = f"/cog/tiles/WebMercatorQuad/19/{t.x}/{t.y}.png"
        first = c.get(path, params={"url": str(sample)})
        assert first.status_code == 200 and first.headers["etag"].startswith('"')
        timing = dict(part.split(";dur=") for part in first.headers["server-timing"].split(", "))
        assert set(timing) == {"read", "encode", "assign", "render"} and float(timing["encode"]) > 0
        encoded = c.app.state.engine.windows_encoded  # type: ignore[attr-defined]
        again = c.get(path, params={"url": str(sample)}, headers={"If-None-Match": first.headers["etag"]})
        assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == first.headers["etag"]
        assert c.app.state.engine.windows_encoded == encoded  # cache_bytes=0: only the ETag spared the work  # type: ignore[attr-defined]
        other = c.get(path.replace(".png", ".webp"), params={"url": str(sample)})
        assert other.headers["etag"] != first.headers["etag"]


def test_cache_control_and_gzip_on_documents(client: TestClient, sample: Path) -> None:
    for path in ("/cog/WebMercatorQuad/tilejson.json", "/cog/WMTSCapabilities.xml"):
        r = client.get(path, params={"url": str(sample)}, headers={"Accept-Encoding": "gzip"})
        assert "max-age" in r.headers["cache-control"], path
    raw = client.get("/openapi.json", headers={"Accept-Encoding": "gzip"}, extensions={"decode": False})
    assert raw.headers["content-encoding"] == "gzip"
    t = centre_tile(client, str(sample))
    tile = client.get(
        f"/cog/tiles/WebMercatorQuad/19/{t.x}/{t.y}.png",
        params={"url": str(sample)},
        headers={"Accept-Encoding": "gzip"},
    )
    assert "content-encoding" not in tile.headers  # PNG is compressed already


def test_docs_and_redoc_work_offline(client: TestClient) -> None:
    for path in ("/docs", "/redoc"):
        page = client.get(path)
        assert page.status_code == 200
        assert "cdn" not in page.text and "googleapis" not in page.text and "/static/" in page.text
    assert client.get("/static/swagger-ui/swagger-ui-bundle.js").status_code == 200
    assert client.get("/static/redoc/redoc.standalone.js").status_code == 200


def test_every_operation_is_named_documented_and_typed(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    missing = []
    ids = []
    for path, methods in spec["paths"].items():
        if not path.startswith(("/cog", "/stac", "/healthz", "/sources")):
            continue  # /rgb and /tileMatrixSets are TiTiler's own factories
        for method, op in methods.items():
            ids.append(op.get("operationId"))
            ok = op.get("operationId") and (op.get("description") or op.get("summary"))
            content = op.get("responses", {}).get("200", {}).get("content", {})
            if not ok or not content:
                missing.append(f"{method.upper()} {path}")
    assert not missing, missing
    assert len(ids) == len(set(ids)), "operation ids must be unique"


# -- a MapLibre page on another origin loads the cluster layer (CORS, in a real browser) ----------
@pytest.mark.slow
def test_maplibre_on_another_origin_loads_the_cluster_layer(app_settings, bundle, sample: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium is not installed (apt-get install chromium; .ci/run does)")
    maplibre = ROOT / "node_modules" / "maplibre-gl" / "dist"
    if not (maplibre / "maplibre-gl.js").exists():
        pytest.fail("node_modules/maplibre-gl is missing: run `npm ci` (make test does)")
    from playwright.sync_api import sync_playwright

    from tests.test_security import UvicornThread

    with UvicornThread(create_app(app_settings, bundle)) as api:
        tj = json.loads(
            TestClient(create_app(app_settings, bundle))
            .get("/cog/WebMercatorQuad/tilejson.json", params={"url": str(sample)})
            .text
        )
        site = tmp_path / "site"
        site.mkdir()
        shutil.copy(maplibre / "maplibre-gl.js", site)
        shutil.copy(maplibre / "maplibre-gl.css", site)
        lon, lat = (tj["bounds"][0] + tj["bounds"][2]) / 2, (tj["bounds"][1] + tj["bounds"][3]) / 2
        tilejson = f"{api}/cog/WebMercatorQuad/tilejson.json?url={sample}"
        (site / "index.html").write_text(f"""<!doctype html><html><head>
<link rel="stylesheet" href="maplibre-gl.css"><script src="maplibre-gl.js"></script></head>
<body style="margin:0"><div id="map" style="width:512px;height:512px"></div><script>
window.tilesLoaded = 0; window.tileErrors = [];
const map = new maplibregl.Map({{container: "map", center: [{lon}, {lat}], zoom: {tj["maxzoom"]},
  style: {{version: 8, sources: {{clusters: {{type: "raster", url: "{tilejson}", tileSize: 256}}}},
          layers: [{{id: "clusters", type: "raster", source: "clusters"}}]}}}});
map.on("sourcedata", e => {{ if (e.sourceId === "clusters" && e.tile) window.tilesLoaded += 1; }});
map.on("error", e => window.tileErrors.push(String(e.error && e.error.message)));
</script></body></html>""")

        class Quiet(SimpleHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), lambda *a, **k: Quiet(*a, directory=str(site), **k))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        page_url = f"http://127.0.0.1:{server.server_address[1]}/index.html"  # another port: another origin
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(
                    executable_path=CHROMIUM,
                    args=[
                        "--no-sandbox",
                        "--use-angle=swiftshader",
                        "--enable-unsafe-swiftshader",
                        "--ignore-gpu-blocklist",
                    ],
                )
                page = browser.new_page()
                cluster_responses: list[tuple[int, str | None]] = []
                page.on(
                    "response",
                    lambda r: (
                        cluster_responses.append((r.status, r.headers.get("access-control-allow-origin")))
                        if "/cog/tiles/" in r.url
                        else None
                    ),
                )
                page.goto(page_url)
                page.wait_for_function("window.tilesLoaded > 0 || window.tileErrors.length > 0", timeout=180_000)
                errors = page.evaluate("window.tileErrors")
                browser.close()
        finally:
            server.shutdown()
    assert not errors, errors
    assert cluster_responses and all(status == 200 and origin for status, origin in cluster_responses)


# -- schemathesis over the OpenAPI: no 5xx, no schema violation -----------------------------------
@pytest.mark.slow
def test_schemathesis_finds_no_server_error_or_schema_violation(stac_client: TestClient, sample: Path) -> None:  # noqa: F811
    """Every GET route, 6 generated requests each, against an app whose STAC API is the local rustac server."""
    client = stac_client
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import response_schema_conformance

    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app).include(
        path_regex="^/(cog|stac|healthz|sources)", method="GET"
    )
    failures: list[str] = []
    operations = 0
    calls = [0]

    def check(operation: Any) -> None:
        name = f"{operation.method.upper()} {operation.path}"

        @settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=operation.as_strategy())
        def run(case: Any) -> None:
            calls[0] += 1
            query = case.query
            if isinstance(query, dict) and "url" in query and "assets" not in query and hash(str(query)) % 2:
                query["url"] = str(sample)  # half the cases on a real image: answers past the guard are checked too
            try:
                case.call_and_validate(checks=[not_a_server_error, response_schema_conformance])
            except Exception as exc:
                failures.append(f"{name}: {str(exc)[:400]}")
                raise

        try:
            run()
        except Exception:
            if not any(f.startswith(name) for f in failures):
                raise  # not a finding about the API: a broken test must not pass

    for result in schema.get_all_operations():
        operations += 1
        check(result.ok())
    assert operations >= 20 and calls[0] >= operations * 3, (operations, calls)
    assert not failures, failures


# -- settings, state, errors a platform team can act on --------------------------------------------
def test_bad_settings_stop_the_cli_with_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    for name, value in (("DINOTILES_MAX_QUEUE", "abc"), ("DINOTILES_REQUEST_TIMEOUT", "-1")):
        proc = subprocess.run(
            [sys.executable, "-m", "dinotiles.cli", "serve", "--port", "1"],
            env={**__import__("os").environ, name: value},
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("dinotiles: error: ") and name in lines[0], proc.stderr


def test_every_list_setting_reads_from_one_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings that hold several values (hosts, buckets, roots, results, …) take one delimited string."""
    import typing

    from dinotiles.server.settings import Settings

    many = [name for name, f in Settings.model_fields.items() if typing.get_origin(f.annotation) is tuple]
    assert {"allowed_hosts", "local_roots", "results"} <= set(many)
    for name in many:
        monkeypatch.setenv(f"DINOTILES_{name.upper()}", "/aaa:/bbb" if name == "local_roots" else "aaa,bbb")
    settings = Settings.from_env()
    for name in many:
        assert len(getattr(settings, name)) == 2, name


def test_two_bundles_in_one_process_keep_their_own_grids(bundle, sample: Path, tmp_path: Path, app_settings) -> None:  # type: ignore[no-untyped-def]
    """The per-source memo is keyed by bundle and source: a 0.5 m bundle never gets the 0.25 m grid."""
    import shutil as sh

    other = tmp_path / "bundle-05"
    sh.copytree(bundle.root, other)
    manifest = json.loads((other / "bundle.json").read_text())
    manifest["target_gsd"] = 0.5
    (other / "bundle.json").write_text(json.dumps(manifest))
    from dinotiles.core.bundle import load_bundle

    half = load_bundle(other)
    assert half.fingerprint != bundle.fingerprint
    infos = []
    for b in (bundle, half, bundle):
        with TestClient(create_app(app_settings, b)) as c:
            infos.append(c.get("/cog/info", params={"url": str(sample)}).json()["analysis"])
    assert infos[0]["pixel_size_crs_units"] == pytest.approx(0.25)
    assert infos[1]["pixel_size_crs_units"] == pytest.approx(0.5)
    assert infos[2] == infos[0]


def test_request_id_in_and_out_and_upstream_outage_is_502(client: TestClient, http_server: str, caplog) -> None:  # type: ignore[no-untyped-def]
    import logging
    import socket

    r = client.get("/healthz", headers={"X-Request-ID": "trace-123"})
    assert r.headers["x-request-id"] == "trace-123"
    assert len(client.get("/healthz").headers["x-request-id"]) == 32
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # nothing listens here once closed
    settings = client.app.state.settings.replace(allowed_hosts=(f"127.0.0.1:{dead}",))  # type: ignore[attr-defined]
    with TestClient(create_app(settings, client.app.state.engine.bundle)) as c, caplog.at_level(logging.WARNING):  # type: ignore[attr-defined]
        r = c.get("/cog/info", params={"url": f"http://127.0.0.1:{dead}/x.tif"}, headers={"X-Request-ID": "outage-1"})
        assert r.status_code == 502 and "127.0.0.1" in r.json()["detail"]
        assert r.headers["x-request-id"] == "outage-1"
    assert any("outage-1" in rec.getMessage() and "502" in rec.getMessage() for rec in caplog.records)


def test_scene_job_reports_progress(stac_client: TestClient) -> None:  # noqa: F811
    import time

    r = stac_client.post("/stac/scenes/cluster", json={"collections": ["aerial"], "limit": 10})
    assert r.status_code == 202
    href = r.json()["href"].replace("http://testserver", "")
    seen = []
    for _ in range(600):
        job = stac_client.get(href).json()
        seen.append(job["progress"]["done"])
        if job["status"] in ("done", "failed"):
            break
        time.sleep(0.2)
    assert job["status"] == "done" and job["progress"] == {"done": 4, "total": 4}
    assert seen == sorted(seen)


def test_bucket_refusal_is_502_naming_the_status(client: TestClient) -> None:
    """A 403 from the object store is the store's failure (502 with the cause), not a bad file (400)."""
    from http.server import BaseHTTPRequestHandler

    class Refuses(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            self.send_response(403)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_HEAD

    server = ThreadingHTTPServer(("127.0.0.1", 0), Refuses)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host = f"127.0.0.1:{server.server_address[1]}"
    try:
        settings = client.app.state.settings.replace(allowed_hosts=(host,))  # type: ignore[attr-defined]
        with TestClient(create_app(settings, client.app.state.engine.bundle)) as c:  # type: ignore[attr-defined]
            for route in ("/cog/info", "/rgb/info"):
                r = c.get(route, params={"url": f"http://{host}/private.tif"})
                assert r.status_code == 502 and "403" in r.json()["detail"], (route, r.text)
    finally:
        server.shutdown()


def test_zoom_overrides_are_bounded_on_inherited_routes(client: TestClient, sample: Path) -> None:
    """Found by schemathesis: TiTiler's tileset route looped over any `maxzoom` (a billion matrices)."""
    import time

    url = str(sample)
    started = time.monotonic()
    for route in ("/cog/tiles/WebMercatorQuad", "/rgb/tiles/WebMercatorQuad", "/rgb/WebMercatorQuad/tilejson.json"):
        for query in ({"maxzoom": "1000000000"}, {"minzoom": "-1"}, {"minzoom": "9", "maxzoom": "3"}):
            r = client.get(route, params={"url": url, **query})
            assert r.status_code == 422 and "zoom" in r.json()["detail"], (route, query, r.text)
    assert time.monotonic() - started < 10
    odd = client.get("/cog/tiles/CDB1GlobalGrid", params={"url": url, "minzoom": 0, "maxzoom": 30})
    assert odd.status_code == 400 and odd.json()["detail"]  # a zoom that TMS does not define: not a 500
