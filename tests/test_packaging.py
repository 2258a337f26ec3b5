"""The package stands on its own: one import name, layers that import one way, a wheel that serves offline."""

from __future__ import annotations

import ast
import filecmp
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import httpx
import pytest

from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = {"service": ROOT / "service" / "dinotiles", "export": ROOT / "export" / "dinotiles"}
STATIC = ROOT / "service" / "dinotiles" / "server" / "static"


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def layer_files(layer: str) -> list[Path]:
    base = PACKAGE["export" if layer == "training" else "service"] / layer
    return sorted(base.rglob("*.py"))


def test_every_import_starts_with_dinotiles() -> None:
    for folder in PACKAGE.values():
        for path in folder.rglob("*.py"):
            bad = {m for m in imports_of(path) if m.split(".")[0] in ("service", "export")}
            assert not bad, f"{path} imports {bad}"


@pytest.mark.parametrize(
    ("layer", "forbidden"),
    [
        ("core", ("fastapi", "starlette", "titiler", "torch", "transformers", "dinotiles.server", "dinotiles.stac")),
        ("stac", ("fastapi", "starlette", "torch", "dinotiles.server")),
        ("scenes", ("fastapi", "starlette", "torch", "dinotiles.server")),
        ("server", ("torch", "transformers", "dinotiles.training")),
    ],
)
def test_layers_import_one_way(layer: str, forbidden: tuple[str, ...]) -> None:
    for path in layer_files(layer):
        bad = {m for m in imports_of(path) if any(m == f or m.startswith(f + ".") for f in forbidden)}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


@pytest.mark.slow
def test_vendored_front_end_matches_npm() -> None:
    """The package's copies of Leaflet, Swagger UI and ReDoc are the npm-pinned files (`make vendor`)."""
    pairs = {
        STATIC / "leaflet" / "leaflet.js": ROOT / "node_modules" / "leaflet" / "dist" / "leaflet.js",
        STATIC / "swagger-ui" / "swagger-ui-bundle.js": ROOT
        / "node_modules"
        / "swagger-ui-dist"
        / "swagger-ui-bundle.js",
        STATIC / "redoc" / "redoc.standalone.js": ROOT / "node_modules" / "redoc" / "bundles" / "redoc.standalone.js",
    }
    if not all(npm.exists() for npm in pairs.values()):
        pytest.fail("node_modules is incomplete: run `npm ci` (make test does)")
    for ours, npm in pairs.items():
        assert filecmp.cmp(ours, npm, shallow=False), f"{ours} differs from {npm}: run `make vendor`"


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_serves_viewer_and_docs_offline(tmp_path: Path, bundle, sample: Path) -> None:  # type: ignore[no-untyped-def]
    """`pip install` of the wheel outside the checkout: the viewer, /docs, /redoc and a cluster tile all work."""
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    wheel = next(wheels.glob("dinotiles-*.whl"))
    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True, timeout=300
    )
    # the dependencies come from the project's venv (a plain path: its editable-install hooks are not run)
    fresh_site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True
    ).stdout.strip()
    Path(fresh_site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    where = subprocess.run(
        [str(py), "-c", "import dinotiles.server.app as a; print(a.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert where.returncode == 0, where.stderr
    assert where.stdout.startswith(fresh_site), where.stdout  # the wheel's copy, not the checkout

    port = 18000 + os.getpid() % 1000
    env = {**os.environ, "DINOTILES_BUNDLE": str(bundle.root), "DINOTILES_LOCAL_ROOTS": str(sample.parent)}
    env.pop("PYTHONPATH", None)
    proc = subprocess.Popen(
        [str(venv / "bin" / "dinotiles"), "serve", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(base + "/healthz", seconds=120)
        viewer = httpx.get(base + "/")
        assert viewer.status_code == 200 and "/static/leaflet/leaflet.js" in viewer.text
        for path in ("/docs", "/redoc"):
            page = httpx.get(base + path)
            assert page.status_code == 200 and "/static/" in page.text and "cdn." not in page.text
        for asset in (
            "/static/leaflet/leaflet.js",
            "/static/leaflet/leaflet.css",
            "/static/swagger-ui/swagger-ui-bundle.js",
            "/static/swagger-ui/swagger-ui.css",
            "/static/redoc/redoc.standalone.js",
        ):
            assert httpx.get(base + asset).status_code == 200, asset
        tj = httpx.get(base + "/cog/WebMercatorQuad/tilejson.json", params={"url": str(sample)}).json()
        import morecantile

        b = tj["bounds"]
        t = morecantile.tms.get("WebMercatorQuad").tile((b[0] + b[2]) / 2, (b[1] + b[3]) / 2, tj["maxzoom"])
        tile = httpx.get(
            tj["tiles"][0].replace("{z}", str(t.z)).replace("{x}", str(t.x)).replace("{y}", str(t.y)), timeout=120
        )
        assert tile.status_code == 200 and tile.content[:4] == b"\x89PNG"  # codebook and model load from the install
    finally:
        proc.terminate()
        proc.wait(10)
