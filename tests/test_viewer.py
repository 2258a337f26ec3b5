"""The viewer in a real browser: a real server, Debian's Chromium driven by Playwright."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import wait_for

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(bundle, sample: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:  # type: ignore[no-untyped-def]
    port = free_port()
    env = {**os.environ, "DINOTILES_BUNDLE": str(bundle.root), "DINOTILES_LOCAL_ROOTS": str(sample.parent)}
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
        loaded = page.eval_on_selector_all("img.leaflet-tile-loaded", "els => els.map(e => [e.src, e.naturalWidth])")
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
