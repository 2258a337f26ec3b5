"""The viewer in a real browser: a real server, Debian's Chromium driven by Playwright."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port, wait_for

# starts a real server and a browser
pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def results(bundle, sample: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    """A result collection of the sample, made by the batch's own steps (plan, bands, publish) in-process."""
    import time

    from dinotiles.batch.outputs import open_output
    from dinotiles.batch.results import SourceSpec, fingerprints, write_collection
    from dinotiles.batch.runner import plan_source, publish_source, render_band
    from dinotiles.server.settings import Settings

    out = tmp_path_factory.mktemp("results") / "demo-results"
    settings = Settings().replace(bundle=bundle.root, local_roots=(sample.parent,))
    engine, policy = settings.open_engine(bundle), settings.source_policy()
    spec, prints = SourceSpec("sample", str(sample)), fingerprints(bundle, engine.fingerprint)
    planned, key = plan_source(engine, policy, spec, band_rows=1)
    bands = [render_band(engine, policy, spec, *band, key) for band in planned]
    publish_source(engine, policy, spec, str(out), prints, bands, time.time(), key)
    write_collection(open_output(out), "demo-results", bundle, prints)
    return out


@pytest.fixture(scope="module")
def server(
    bundle, sample: Path, rasters, stac_api: str, results: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:  # type: ignore[no-untyped-def]
    port = free_port()
    roots = f"{sample.parent}:{rasters['two_band'].parent}"
    env = {
        **os.environ,
        "DINOTILES_BUNDLE": str(bundle.root),
        "DINOTILES_LOCAL_ROOTS": roots,
        "DINOTILES_STAC_URL": stac_api,  # a real STAC API (rustac) whose items' COGs are served over HTTP
        "DINOTILES_ALLOWED_HOSTS": "127.0.0.1",
        "DINOTILES_SCENES_SYNC_MAX": "3",  # 4 items: scene clustering runs as a job with progress
        "DINOTILES_RESULTS": str(results),  # a precomputed collection, listed with the images
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "dinotiles.cli", "serve", "--port", str(port)],
        cwd=tmp_path_factory.mktemp("elsewhere"),  # the viewer's files come from the package, not the checkout
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(url + "/healthz", seconds=120)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def test_viewer_shows_clusters_over_imagery(server: str, tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium is not installed (apt-get install chromium; .ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 900, "height": 700})
        failed: list[str] = []
        page.on("response", lambda r: failed.append(r.url) if r.status >= 400 else None)
        page.goto(server + "/")
        page.wait_for_function("document.body.dataset.clustersLoaded === '1'", timeout=120_000)
        loaded = page.eval_on_selector_all(
            "img.leaflet-tile-loaded", "els => els.map(e => [e.dataset.url, e.naturalWidth])"
        )
        cluster_tiles = [src for src, w in loaded if "/cog/tiles/" in src and w > 0]
        imagery_tiles = [src for src, w in loaded if "/rgb/tiles/" in src and w > 0]
        assert cluster_tiles and imagery_tiles
        assert not [u for u in failed if "/cog/tiles/" in u or "/static/" in u]
        pane = "document.querySelectorAll('.leaflet-layer')[1].style.opacity"
        assert float(page.evaluate(pane)) == pytest.approx(0.6)
        page.fill("#opacity", "0.2")
        page.dispatch_event("#opacity", "input")
        assert float(page.evaluate(pane)) == pytest.approx(0.2)
        page.fill("#opacity", "0.6")
        page.dispatch_event("#opacity", "input")
        box = page.locator("#map").bounding_box()
        assert box is not None
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.wait_for_function("document.getElementById('clicked').textContent.startsWith('Cluster')")
        page.screenshot(path=str(tmp_path / "viewer.png"))
        if os.environ.get("DINOTILES_SCREENSHOT"):
            shutil.copy(tmp_path / "viewer.png", os.environ["DINOTILES_SCREENSHOT"])
        browser.close()


@pytest.fixture
def page(server: str):  # type: ignore[no-untyped-def]
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium is not installed (apt-get install chromium; .ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 900, "height": 700})
        yield page
        browser.close()


def cluster_tile_urls(page) -> list[str]:  # type: ignore[no-untyped-def]
    return [
        u
        for u in page.eval_on_selector_all("img.leaflet-tile", "els => els.map(e => e.dataset.url || e.src)")
        if "/cog/tiles/" in u
    ]


def texts_of(page, element_id: str) -> list[str]:  # type: ignore[no-untyped-def]
    """Every text the element shows from the page's load on (progress lines come and go between polls)."""
    seen: list[str] = []
    page.expose_function("record", lambda text: seen.append(text))
    page.add_init_script(
        f"new MutationObserver(() => {{ const s = document.getElementById('{element_id}');"
        " if (s && s.textContent) window.record(s.textContent); })"
        ".observe(document, {subtree: true, childList: true, characterData: true});"
    )
    return seen


def test_viewer_shows_progress_while_clusters_are_computed(page, server: str) -> None:  # type: ignore[no-untyped-def]
    seen = texts_of(page, "status")
    page.goto(server + "/")
    page.wait_for_function("document.body.dataset.clustersLoaded === '1'", timeout=120_000)
    # imagery was there first, clusters came in with a count of what was pending
    assert any("pending" in t for t in seen), seen
    assert page.text_content("#status").startswith("Clusters:")
    assert page.eval_on_selector("#status", "e => e.classList.contains('busy')") is False
    assert page.locator(".leaflet-control-scale").count() == 1
    attribution = page.text_content(".leaflet-control-attribution")
    assert "Clusters: dinotiles" in attribution and "Imagery:" in attribution


def test_legend_shows_shares_and_highlights_a_cluster_or_group(page, server: str) -> None:  # type: ignore[no-untyped-def]
    page.goto(server + "/")
    page.wait_for_function("document.body.dataset.clustersLoaded === '1'", timeout=120_000)
    page.wait_for_selector("#legend .entry", timeout=60_000)
    shares = page.eval_on_selector_all("#legend .entry .share", "els => els.map(e => parseFloat(e.textContent))")
    assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 100.5
    first = page.get_attribute("#legend .entry", "data-id")
    page.click("#legend .entry")
    page.wait_for_function(f"document.body.dataset.highlight === '{first}'")
    page.wait_for_function("document.body.dataset.clustersLoaded === '1'", timeout=120_000)
    assert all(f"highlight={first}" in u for u in cluster_tile_urls(page))
    page.fill("#groups", "8")
    page.dispatch_event("#groups", "change")
    assert page.text_content("#groups-label") == "8 groups"
    page.wait_for_function(
        "[...document.querySelectorAll('#legend .entry span:nth-child(2)')]"
        ".some(e => e.textContent.startsWith('Group'))",
        timeout=120_000,
    )
    urls = cluster_tile_urls(page)
    assert urls and all("groups=8" in u and "highlight" not in u for u in urls)
    if os.environ.get("DINOTILES_SCREENSHOT_GROUPS"):  # the README's picture of the legend and groups
        page.wait_for_function("document.body.dataset.clustersLoaded === '1'", timeout=120_000)
        page.screenshot(path=os.environ["DINOTILES_SCREENSHOT_GROUPS"])


def test_viewer_explains_errors_and_when_to_zoom_in(page, server: str, rasters) -> None:  # type: ignore[no-untyped-def]
    page.goto(server + "/")
    page.wait_for_function("document.body.dataset.clustersLoaded === '1'", timeout=120_000)
    assert page.is_hidden("#hint")
    page.evaluate("map.setZoom(state.tj.minzoom - 2)")
    page.wait_for_selector("#hint", state="visible")
    assert page.text_content("#hint").startswith("Zoom in to see clusters (from zoom ")
    page.fill("#url", str(rasters["two_band"]))
    page.click("#open button")
    page.wait_for_function("document.getElementById('error').textContent.length > 0", timeout=60_000)
    error = page.text_content("#error")
    assert "two_band.tif" in error and "band" in error.lower() and "Traceback" not in error, error
    page.fill("#url", "/nowhere/missing.tif")
    page.click("#open button")
    page.wait_for_function("document.getElementById('error').textContent.includes('missing.tif')", timeout=60_000)


def test_search_imagery_in_view_and_open_an_item(page, server: str) -> None:  # type: ignore[no-untyped-def]
    page.goto(server + "/")
    page.wait_for_function("document.body.dataset.clustersLoaded === '1'", timeout=120_000)
    page.click("#search")
    page.wait_for_function("document.querySelectorAll('#items .item').length >= 4", timeout=60_000)
    entries = page.eval_on_selector_all("#items .item", "els => els.map(e => [e.dataset.id, e.textContent])")
    assert ["scene-0", "2024-01-01 · aerial · scene-0"] in [list(e) for e in entries]
    assert page.locator(".leaflet-overlay-pane path").count() >= 4  # the items' footprints on the map
    page.click("#items .item[data-id='scene-1']")
    page.wait_for_function("document.body.dataset.item === 'scene-1'")
    page.wait_for_function("document.body.dataset.clustersLoaded === '1'", timeout=120_000)
    imagery = page.eval_on_selector_all("img.leaflet-tile", "els => els.map(e => e.dataset.url || e.src)")
    urls = [u for u in imagery if "/stac/tiles/" in u]
    assert urls and all("scene-1" in u for u in urls) and not cluster_tile_urls(page)
    assert any("/rgb/tiles/" in u and "url=http%3A%2F%2F127.0.0.1" in u for u in imagery)
    page.wait_for_function("document.getElementById('legend').textContent.startsWith('In the item')", timeout=60_000)
    page.click("#items .item[data-id='no-raster']")
    page.wait_for_function("document.getElementById('error').textContent.includes('no-raster')")


def test_group_searched_scenes_with_progress_and_thumbnails(page, server: str) -> None:  # type: ignore[no-untyped-def]
    seen = texts_of(page, "scene-groups")
    page.goto(server + "/")
    page.wait_for_function("document.body.dataset.clustersLoaded === '1'", timeout=120_000)
    assert page.is_disabled("#scenes")
    page.click("#search")
    page.wait_for_function("!document.getElementById('scenes').disabled", timeout=60_000)
    page.click("#scenes")
    page.wait_for_function("document.getElementById('scene-groups').dataset.ready === '1'", timeout=300_000)
    assert any("Clustering scenes:" in t and "items summarised" in t for t in seen), seen  # the job's progress
    scenes = page.eval_on_selector_all("#scene-groups .scene", "els => els.map(e => [e.dataset.id, e.dataset.cluster])")
    assert sorted(i for i, _ in scenes) == ["scene-0", "scene-1", "scene-2"]
    assert {c for _, c in scenes} == {"0"}  # three copies of one image: one group
    page.wait_for_function(
        "[...document.querySelectorAll('#scene-groups .scene img')].every(i => i.complete && i.naturalWidth > 0)",
        timeout=60_000,
    )
    assert "skipped no-raster" in page.text_content("#scene-groups")
    page.click("#scene-groups .scene[data-id='scene-2']")
    page.wait_for_function("document.body.dataset.item === 'scene-2'")


def test_a_result_collection_shows_from_low_zooms(page, server: str) -> None:  # type: ignore[no-untyped-def]
    """A `dinotiles batch` collection is in the image list and shows where on-the-fly tiles stop."""
    page.goto(server + "/")
    page.wait_for_function("document.body.dataset.clustersLoaded === '1'", timeout=120_000)
    options = page.eval_on_selector_all("#source option", "els => els.map(e => e.value)")
    assert "collection:demo-results" in options
    page.select_option("#source", "collection:demo-results")
    page.wait_for_function("state.spec && state.spec.collection === true")
    page.wait_for_function("document.body.dataset.clustersLoaded === '1'", timeout=60_000)
    page.evaluate("map.setZoom(13)")  # far below the on-the-fly minzoom
    # the z13 collection tiles load and replace the z17 ones (waited for: the flag of the z17 load may
    # still be up when the zoom starts)
    page.wait_for_function(
        """() => {
            const urls = [...document.querySelectorAll('img.leaflet-tile-loaded')]
                .map(e => e.dataset.url).filter(Boolean);
            const z13 = '/collections/demo-results/tiles/WebMercatorQuad/13/';
            return urls.length > 0 && urls.every(u => u.includes(z13));
        }""",
        timeout=60_000,
    )
    page.wait_for_function("document.body.dataset.clustersLoaded === '1'", timeout=60_000)
    assert page.is_hidden("#hint")
    page.wait_for_selector("#legend .entry", timeout=60_000)
