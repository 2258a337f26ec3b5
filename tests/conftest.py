"""Shared fixtures: the real demo bundle, real images, a real HTTP server with Range support."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import rasterio
from fastapi.testclient import TestClient
from rasterio.enums import ColorInterp
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from dinotiles.core.bundle import Bundle, load_bundle
from dinotiles.server.app import create_app
from dinotiles.server.settings import Settings, demo_dir
from dinotiles.training.demo import prepare

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
OAM = SHARED / "oam"


@pytest.fixture(scope="session")
def demo() -> tuple[Path, Path]:
    """The demo bundle and sample image (built once, cached in .dinotiles/)."""
    return prepare(demo_dir())


@pytest.fixture(scope="session")
def bundle(demo: tuple[Path, Path]) -> Bundle:
    return load_bundle(demo[0])


@pytest.fixture(scope="session")
def sample(demo: tuple[Path, Path]) -> Path:
    return demo[1]


@pytest.fixture(scope="session")
def oam_image() -> Path:
    images = sorted(OAM.glob("*.tif"))
    if not images:
        pytest.skip(f"real OAM imagery not found at {OAM} (see ../shared/data/README.md)")
    return images[0]


@pytest.fixture(scope="session")
def rasters(tmp_path_factory: pytest.TempPathFactory, sample: Path) -> dict[str, Path]:
    """Variants of the sample image: band layouts, bit depths, no-data, broken files."""
    out = tmp_path_factory.mktemp("rasters")
    with rasterio.open(sample) as src:
        rgb = src.read()
        profile = src.profile.copy()
    profile.update(driver="GTiff", tiled=True, blockxsize=256, blockysize=256, compress="deflate")
    paths: dict[str, Path] = {}

    def write(name: str, data: np.ndarray, interp: list[str] | None = None, **extra: object) -> None:
        p = out / f"{name}.tif"
        prof = {
            **{k: v for k, v in profile.items() if k != "photometric"},
            "count": data.shape[0],
            "dtype": data.dtype.name,
            **extra,
        }
        with rasterio.open(p, "w", **prof) as dst:
            dst.write(data)
            if interp:
                dst.colorinterp = [ColorInterp[c] for c in interp]
        paths[name] = p

    write("gray", rgb[:1])
    write("rgb16", rgb.astype(np.uint16) * 257)
    write(
        "rgbn",
        np.concatenate([rgb, rgb[:1]]),
        interp=["red", "green", "blue", "undefined"],
        photometric="RGB",
        alpha="UNSPECIFIED",
    )
    write("two_band", rgb[:2])
    half = rgb.copy()
    half[:, :, : half.shape[2] // 2] = 0
    write("half_nodata", half, nodata=0)
    (out / "corrupt.tif").write_bytes(b"II*\x00" + os.urandom(2048))
    paths["corrupt"] = out / "corrupt.tif"
    (out / "notes.tif").write_text("this is not a raster\n")
    paths["text"] = out / "notes.tif"
    return paths


@pytest.fixture(scope="session")
def settings(demo: tuple[Path, Path], rasters: dict[str, Path]) -> Settings:
    roots = [demo[1].parent, rasters["gray"].parent]
    if OAM.is_dir():
        roots.append(OAM)
    return Settings().replace(bundle=demo[0], local_roots=tuple(roots), allowed_hosts=("127.0.0.1",))


class RangeHandler(SimpleHTTPRequestHandler):
    """Static files with single byte-range support, as object stores serve COGs."""

    ranges_served = 0

    def log_message(self, *args: object) -> None:
        pass

    def send_head(self):  # type: ignore[no-untyped-def]
        header = self.headers.get("Range")
        path = Path(self.translate_path(self.path))
        if not header or not path.is_file():
            return super().send_head()
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", header.strip())
        size = path.stat().st_size
        if not match:
            self.send_error(416)
            return None
        start, end = int(match[1]), int(match[2] or size - 1)
        end = min(end, size - 1)
        fh = path.open("rb")
        fh.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", "image/tiff")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        type(self).ranges_served += 1
        self.wfile.write(fh.read(end - start + 1))
        fh.close()
        return None


@pytest.fixture(scope="session")
def http_server(sample: Path) -> Iterator[str]:
    """Serves the sample image's folder on 127.0.0.1 with Range requests."""

    def handler(*args: object, **kwargs: object) -> RangeHandler:
        return RangeHandler(*args, directory=str(sample.parent), **kwargs)  # type: ignore[arg-type]

    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="session")
def app_settings(settings: Settings, http_server: str) -> Settings:
    host = http_server.removeprefix("http://")
    return settings.replace(allowed_hosts=(host,))


@pytest.fixture(scope="session")
def client(app_settings: Settings, bundle: Bundle) -> Iterator[TestClient]:
    with TestClient(create_app(app_settings, bundle), raise_server_exceptions=False) as c:
        yield c


def wait_for(url: str, seconds: float = 60.0) -> None:
    """Poll until a freshly started server answers (or fail the test)."""
    import time
    import urllib.request

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"{url} did not answer within {seconds:.0f} s")


def crop(src: Path, dst: Path, size: int) -> Path:
    """A centred size×size crop written as a tiled GeoTIFF (small real data for slow paths)."""
    with rasterio.open(src) as ds:
        win = Window((ds.width - size) // 2, (ds.height - size) // 2, size, size)
        data = ds.read(window=win)
        profile = ds.profile.copy()
        profile.update(
            width=size,
            height=size,
            transform=ds.window_transform(win),
            driver="GTiff",
            tiled=True,
            blockxsize=256,
            blockysize=256,
            compress="deflate",
        )
        profile.pop("photometric", None)
    with rasterio.open(dst, "w", **profile) as out:
        out.write(data)
    return dst


def open_cluster(engine, settings: Settings, path: str):  # type: ignore[no-untyped-def]
    """A ClusterReader over a local file, as the server would build it (the guard resolves the path)."""
    import morecantile

    from dinotiles.core.reader import cluster_reader
    from dinotiles.core.sources import resolve_source

    policy = settings.source_policy()
    reader = cluster_reader(engine, policy, settings.request_limits())
    return reader(resolve_source(path, policy), tms=morecantile.tms.get("WebMercatorQuad"))


# -- a real STAC API: rustac serve (in memory) with items whose COGs are served over HTTP ----------
RUSTAC = shutil.which("rustac") or str(Path(__file__).resolve().parent.parent / ".venv" / "bin" / "rustac")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stac_item(item_id: str, path: Path, href: str, date: str) -> dict:
    with rasterio.open(path) as ds:
        w, s, e, n = transform_bounds(ds.crs, "EPSG:4326", *ds.bounds)
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": item_id,
        "collection": "aerial",
        "geometry": {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]},
        "bbox": [w, s, e, n],
        "properties": {"datetime": date, "gsd": 0.25},
        "links": [],
        "assets": {
            "visual": {
                "href": href,
                "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                "roles": ["visual"],
            }
        },
    }


@pytest.fixture(scope="module")
def stac_api(
    tmp_path_factory: pytest.TempPathFactory, sample: Path, http_server: str, rasters: dict[str, Path]
) -> Iterator[str]:
    """rustac serve with 3 items on the sample image (COG over HTTP) and one item with no raster asset."""
    folder = tmp_path_factory.mktemp("stac")
    items = [
        stac_item(f"scene-{i}", sample, f"{http_server}/{sample.name}", f"2024-0{i + 1}-01T00:00:00Z") for i in range(3)
    ]
    broken = stac_item("no-raster", sample, "", "2024-05-01T00:00:00Z")
    broken["assets"] = {"metadata": {"href": f"{http_server}/meta.json", "type": "application/json"}}
    items.append(broken)
    (folder / "items.json").write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    port = free_port()
    proc = subprocess.Popen(
        [RUSTAC, "serve", "--create-collections", "--addr", f"127.0.0.1:{port}", str(folder / "items.json")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(url + "/")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
