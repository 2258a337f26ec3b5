"""The tile service on the real demo bundle and real images: seamless, zoom-consistent, cached."""

from __future__ import annotations

import io
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import morecantile
import numpy as np
import pytest
import rasterio
from fastapi.testclient import TestClient
from PIL import Image
from pyproj import Transformer
from rasterio.warp import transform_bounds

from dinotiles.server.app import create_app
from tests.conftest import open_cluster

TMS = morecantile.tms.get("WebMercatorQuad")


def centre(client, url: str) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    b = client.get("/cog/WebMercatorQuad/tilejson.json", params={"url": url}).json()["bounds"]
    return (b[0] + b[2]) / 2, (b[1] + b[3]) / 2


def ids_tile(client, url: str, z: int, x: int, y: int, scale: int = 1) -> np.ndarray:  # type: ignore[no-untyped-def]
    suffix = f"@{scale}x.npy" if scale > 1 else ".npy"
    r = client.get(f"/cog/tiles/WebMercatorQuad/{z}/{x}/{y}{suffix}", params={"url": url})
    assert r.status_code == 200, r.text
    return np.load(io.BytesIO(r.content))


@pytest.mark.slow
def test_png_is_rgba_with_transparent_nodata(client, sample: Path, bundle) -> None:  # type: ignore[no-untyped-def]
    lon, lat = centre(client, str(sample))
    t = TMS.tile(lon, lat, 19)
    r = client.get(f"/cog/tiles/WebMercatorQuad/19/{t.x}/{t.y}", params={"url": str(sample)})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    rgba = np.asarray(Image.open(io.BytesIO(r.content)))
    ids = ids_tile(client, str(sample), 19, t.x, t.y)
    assert rgba.shape == (256, 256, 4)
    assert ((rgba[..., 3] == 0) == (ids == 65535)).all()
    valid = ids != 65535
    assert valid.mean() > 0.5
    assert (rgba[..., :3][valid] == bundle.codebook.colors[ids[valid]]).all()
    assert len(np.unique(ids[valid])) > 3


@pytest.mark.slow
def test_webp_and_tif_formats(client, sample: Path) -> None:  # type: ignore[no-untyped-def]
    lon, lat = centre(client, str(sample))
    t = TMS.tile(lon, lat, 19)
    webp = client.get(f"/cog/tiles/WebMercatorQuad/19/{t.x}/{t.y}.webp", params={"url": str(sample)})
    assert webp.status_code == 200 and Image.open(io.BytesIO(webp.content)).format == "WEBP"
    tif = client.get(f"/cog/tiles/WebMercatorQuad/19/{t.x}/{t.y}@2x.tif", params={"url": str(sample)})
    assert tif.status_code == 200
    with rasterio.MemoryFile(tif.content) as mem, mem.open() as ds:
        assert ds.dtypes[0] == "uint16" and ds.nodata == 65535 and ds.shape == (512, 512)
        assert ds.crs.to_epsg() == 3857
        data = ds.read(1)
    assert (data == ids_tile(client, str(sample), 19, t.x, t.y, scale=2)).all()


@pytest.mark.slow
def test_tiles_are_seamless(client, oam_image: Path, bundle) -> None:  # type: ignore[no-untyped-def]
    """Cluster changes across tile seams are no more frequent than across patch edges inside tiles."""
    url = str(oam_image)
    lon, lat = centre(client, url)
    t = TMS.tile(lon, lat, 19)
    rows = [np.hstack([ids_tile(client, url, 19, t.x + dx, t.y + dy) for dx in (-1, 0, 1)]) for dy in (-1, 0, 1)]
    ids = np.vstack(rows)
    # which source patch each output pixel centre falls in, computed independently of the server
    left, _, _, top = TMS.xy_bounds(t.x - 1, t.y - 1, 19)
    res = (TMS.xy_bounds(t.x, t.y, 19).right - TMS.xy_bounds(t.x, t.y, 19).left) / 256
    ys, xs = np.mgrid[0:768, 0:768]
    with rasterio.open(oam_image) as ds:
        tr = Transformer.from_crs("EPSG:3857", ds.crs, always_xy=True)
        gx, gy = tr.transform(left + (xs + 0.5) * res, top - (ys + 0.5) * res)
        cell = 0.25 * 14  # a UTM image: its grid is its CRS at 0.25 m, patches on the lattice of 26-patch cores
        step = cell * 26
        pr = np.floor((np.ceil(ds.bounds.top / step) * step - gy) / cell).astype(int)
        pc = np.floor((gx - np.floor(ds.bounds.left / step) * step) / cell).astype(int)
    valid = ids != 65535
    seam_x = np.zeros((768, 767), bool)
    seam_x[:, [255, 511]] = True
    seam_y = np.zeros((767, 768), bool)
    seam_y[[255, 511], :] = True
    pairs = [
        (
            ids[:, 1:] != ids[:, :-1],
            (pr[:, 1:] != pr[:, :-1]) | (pc[:, 1:] != pc[:, :-1]),
            seam_x,
            valid[:, 1:] & valid[:, :-1],
        ),
        (ids[1:] != ids[:-1], (pr[1:] != pr[:-1]) | (pc[1:] != pc[:-1]), seam_y, valid[1:] & valid[:-1]),
    ]
    changes_seam = sum(int((d & s & v).sum()) for d, _, s, v in pairs)
    n_seam = sum(int((s & v).sum()) for _, _, s, v in pairs)
    changes_patch = sum(int((d & p & ~s & v).sum()) for d, p, s, v in pairs)
    n_patch = sum(int((p & ~s & v).sum()) for _, p, s, v in pairs)
    seam_rate, patch_rate = changes_seam / n_seam, changes_patch / n_patch
    assert patch_rate > 0.2  # real imagery: neighbouring patches often differ
    assert seam_rate / patch_rate <= 1.2
    # stronger: inside one source patch the ID never changes, across seams or not
    same_patch_changes = sum(int((d & ~p & v).sum()) for d, p, _, v in pairs)
    assert same_patch_changes / sum(int((~p & v).sum()) for _, p, _, v in pairs) < 0.01


@pytest.mark.slow
def test_zoom_consistency(client, sample: Path) -> None:  # type: ignore[no-untyped-def]
    lon, lat = centre(client, str(sample))
    parent = TMS.tile(lon, lat, 18)
    big = ids_tile(client, str(sample), 18, parent.x, parent.y, scale=2)
    kids = np.vstack(
        [
            np.hstack([ids_tile(client, str(sample), 19, 2 * parent.x + dx, 2 * parent.y + dy) for dx in (0, 1)])
            for dy in (0, 1)
        ]
    )
    both = (big != 65535) | (kids != 65535)
    assert both.sum() > 10_000
    assert (big[both] == kids[both]).mean() >= 0.98


@pytest.mark.slow
def test_same_ids_in_another_tms(client, sample: Path) -> None:  # type: ignore[no-untyped-def]
    """A point's cluster does not depend on the tiling scheme."""
    lon, lat = centre(client, str(sample))
    tms2 = morecantile.tms.get("WorldCRS84Quad")
    t = tms2.tile(lon, lat, 18)
    r = client.get(f"/cog/tiles/WorldCRS84Quad/18/{t.x}/{t.y}.npy", params={"url": str(sample)})
    assert r.status_code == 200
    ids = np.load(io.BytesIO(r.content))
    b = tms2.xy_bounds(t)
    col = int((lon - b.left) / (b.right - b.left) * 256)
    row = int((b.top - lat) / (b.top - b.bottom) * 256)
    point = client.get(f"/cog/point/{lon},{lat}", params={"url": str(sample)}).json()
    assert ids[row, col] == point["cluster"]


@pytest.mark.slow
def test_tilejson_and_minzoom_limit(client, sample: Path, app_settings) -> None:  # type: ignore[no-untyped-def]
    tj = client.get("/cog/WebMercatorQuad/tilejson.json", params={"url": str(sample)}).json()
    assert 17 <= tj["maxzoom"] <= 20 and tj["minzoom"] < tj["maxzoom"]
    assert tj["tiles"][0].startswith("http") and "url=" in tj["tiles"][0]
    lon, lat = centre(client, str(sample))
    z = tj["minzoom"] - 1
    t = TMS.tile(lon, lat, z)
    r = client.get(f"/cog/tiles/WebMercatorQuad/{z}/{t.x}/{t.y}.png", params={"url": str(sample)})
    assert r.status_code == 404
    assert "minzoom" in r.json()["detail"] and str(app_settings.max_windows) in r.json()["detail"]
    ok = TMS.tile(lon, lat, tj["minzoom"])
    assert (
        client.get(
            f"/cog/tiles/WebMercatorQuad/{tj['minzoom']}/{ok.x}/{ok.y}.npy", params={"url": str(sample)}
        ).status_code
        == 200
    )


@pytest.mark.slow
def test_minzoom_budget_is_honest(bundle, sample: Path, app_settings) -> None:  # type: ignore[no-untyped-def]
    """At minzoom every tile over the image needs at most the budget's windows."""
    engine = create_app(app_settings, bundle).state.engine
    with open_cluster(engine, app_settings, str(sample)) as src:
        z = src.minzoom
        west, south, east, north = src.geographic_bounds()
        grid = src.view.grid
        for t in TMS.tiles(west, south, east, north, [z]):
            span = grid.patch_range(transform_bounds("EPSG:3857", grid.crs, *TMS.xy_bounds(t), densify_pts=21))
            if span:
                assert engine.windows_needed(grid, *span) <= app_settings.max_windows


@pytest.mark.slow
def test_wmts_capabilities(client, sample: Path) -> None:  # type: ignore[no-untyped-def]
    from xml.etree import ElementTree

    r = client.get("/cog/WebMercatorQuad/WMTSCapabilities.xml", params={"url": str(sample)})
    assert r.status_code == 200
    root = ElementTree.fromstring(r.content)
    ns = {"w": "http://www.opengis.net/wmts/1.0"}
    url = root.find(".//w:ResourceURL", ns).get("template")  # type: ignore[union-attr]
    assert "{TileMatrix}/{TileCol}/{TileRow}" in url and "url=" in url
    assert len(root.findall(".//w:TileMatrix", ns)) >= 2


@pytest.mark.slow
def test_info_point_statistics(client, sample: Path, bundle) -> None:  # type: ignore[no-untyped-def]
    info = client.get("/cog/info", params={"url": str(sample)}).json()
    grid = info["analysis"]
    assert grid["gsd_m"] == 0.25 and grid["pixel_size_crs_units"] == 0.25  # a metric CRS: as it is
    # 1000 px = 71.4 patches, on a grid whose corner sits on the ground lattice (one 26-patch core)
    step = 0.25 * 14 * 26
    assert all(abs(v / step - round(v / step)) < 1e-9 for v in grid["origin"])
    assert all(72 <= n <= 72 + 26 for n in grid["patches"]), grid
    assert grid["windows"] == [-(-n // 26) for n in grid["patches"]]
    lon, lat = centre(client, str(sample))
    p = client.get(f"/cog/point/{lon},{lat}", params={"url": str(sample)}).json()
    assert isinstance(p["cluster"], int) and p["color"] == [int(c) for c in bundle.codebook.colors[p["cluster"]]]
    d = 0.0003
    s = client.get("/cog/statistics", params={"url": str(sample), "bbox": f"{lon - d},{lat - d},{lon + d},{lat + d}"})
    assert s.status_code == 200, s.text
    body = s.json()
    shares = [c["share"] for c in body["clusters"]]
    assert shares == sorted(shares, reverse=True) and abs(sum(shares) - 1) < 1e-6
    assert sum(c["count"] for c in body["clusters"]) == body["valid_patches"] > 100
    assert body["clusters"][0]["color"] == [int(v) for v in bundle.codebook.colors[body["clusters"][0]["cluster"]]]
    big = client.get("/cog/statistics", params={"url": str(sample), "bbox": f"{lon - 1},{lat - 1},{lon + 1},{lat + 1}"})
    assert big.status_code == 400 and "DINOTILES_MAX_STATS_AREA_M2" in big.json()["detail"]


@pytest.mark.slow
def test_nodata_is_transparent_and_null(client, rasters: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    url = str(rasters["half_nodata"])
    tj = client.get("/cog/WebMercatorQuad/tilejson.json", params={"url": url}).json()
    west, south, east, north = tj["bounds"]
    lat = (south + north) / 2
    left = client.get(f"/cog/point/{west + (east - west) * 0.2},{lat}", params={"url": url}).json()
    right = client.get(f"/cog/point/{west + (east - west) * 0.8},{lat}", params={"url": url}).json()
    assert left["cluster"] is None and left["color"] is None
    assert isinstance(right["cluster"], int)


@pytest.mark.slow
def test_cache_reuses_inference(client, sample: Path) -> None:  # type: ignore[no-untyped-def]
    engine = client.app.state.engine
    lon, lat = centre(client, str(sample))
    t = TMS.tile(lon, lat, 18)
    ids_tile(client, str(sample), 18, t.x, t.y)
    before = engine.windows_encoded
    again = ids_tile(client, str(sample), 18, t.x, t.y)
    ids_tile(client, str(sample), 19, 2 * t.x, 2 * t.y)
    client.get(f"/cog/tiles/WebMercatorQuad/18/{t.x}/{t.y}.png", params={"url": str(sample)})
    assert engine.windows_encoded == before
    assert (again != 65535).any()
    assert engine.cache.size <= engine.cache.capacity


def test_byte_lru_evicts_by_bytes() -> None:
    from dinotiles.core.cache import ENTRY_OVERHEAD, ByteLRU

    cache = ByteLRU(capacity=3 * (1000 + ENTRY_OVERHEAD))
    for i in range(5):
        cache.put(i, np.zeros(1000, np.uint8))
    assert cache.size <= cache.capacity and cache.get(0) is None and cache.get(4) is not None
    cache.get(2)
    cache.put(9, np.zeros(1000, np.uint8))
    assert cache.get(2) is not None and cache.get(3) is None
    # empty arrays (windows with no data) are not free: a flood of them stays bounded
    empties = ByteLRU(capacity=10 * ENTRY_OVERHEAD)
    for i in range(10_000):
        empties.put(i, np.zeros((0, 0, 0), np.float16))
    assert len(empties) == 10


@pytest.mark.slow
def test_remote_cog_over_http_range(client, sample: Path, http_server: str) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import RangeHandler

    # a URL of its own: GDAL caches what it read per URL, and earlier tests (STAC items) read this file
    remote = f"{http_server}/{sample.name}?for=test_remote_cog_over_http_range"
    lon, lat = centre(client, str(sample))
    t = TMS.tile(lon, lat, 19)
    before = RangeHandler.ranges_served
    assert (ids_tile(client, remote, 19, t.x, t.y) == ids_tile(client, str(sample), 19, t.x, t.y)).all()
    assert RangeHandler.ranges_served > before


def window_seam_ratio(ids: np.ndarray, core: int) -> tuple[float, float]:
    """Change rate between neighbouring patches across window seams, and elsewhere."""
    v = ids != 65535
    dx, vx = ids[:, 1:] != ids[:, :-1], v[:, 1:] & v[:, :-1]
    dy, vy = ids[1:] != ids[:-1], v[1:] & v[:-1]
    cols = np.arange(1, ids.shape[1]) % core == 0
    rows = np.arange(1, ids.shape[0]) % core == 0
    seam = ((dx & vx)[:, cols].sum() + (dy & vy)[rows].sum()) / (vx[:, cols].sum() + vy[rows].sum())
    inner = ((dx & vx)[:, ~cols].sum() + (dy & vy)[~rows].sum()) / (vx[:, ~cols].sum() + vy[~rows].sum())
    return float(seam), float(inner)


@pytest.mark.slow
def test_window_seams_do_not_show(client, oam_image: Path) -> None:  # type: ignore[no-untyped-def]
    """Where two inference windows meet, clusters change not much more often than between any neighbours.

    Measured on this scene: 4.9 with the demo weights' last layer (every seam visible),
    1.6 with block-8 features and the positional basis removed (docs/feature-layer.md).
    """
    engine = client.app.state.engine
    with open_cluster(engine, client.app.state.settings, str(oam_image)) as src:
        grid = src.view.grid
        ids = engine.mosaic(src.view, 0, 4 * grid.core, 0, 4 * grid.core)
    seam, inner = window_seam_ratio(ids, grid.core)
    assert inner > 0.1
    assert seam / inner <= 2.0, (seam, inner)


@pytest.mark.slow
def test_concurrent_cold_requests_encode_each_window_once(app_settings, bundle, sample: Path) -> None:  # type: ignore[no-untyped-def]
    """16 identical requests for one uncached tile at once: each window encoded once, 16 identical bodies."""
    url, n = str(sample), 16
    settings = app_settings.replace(cache_bytes=64 * 1024 * 1024)  # holds every window of the tile
    with TestClient(create_app(settings, bundle), raise_server_exceptions=False) as alone:
        # the z19 tile over the most inference windows (it straddles window seams), found without encoding
        with open_cluster(alone.app.state.engine, settings, url) as src:
            grid = src.view.grid

            def windows(tile: morecantile.Tile) -> int:
                bounds = transform_bounds("EPSG:3857", grid.crs, *TMS.xy_bounds(tile), densify_pts=21)
                span = grid.patch_range(bounds)
                return alone.app.state.engine.windows_needed(grid, *span) if span else 0

            t = max(TMS.tiles(*src.geographic_bounds(), [19]), key=windows)
        path = f"/cog/tiles/WebMercatorQuad/19/{t.x}/{t.y}.png"
        # the windows it needs, counted honestly: the same request once, alone, on this other fresh app
        assert alone.app.state.engine.windows_encoded == 0
        assert alone.get(path, params={"url": url}).status_code == 200
        needed = alone.app.state.engine.windows_encoded
    assert needed > 1, needed  # several windows, so that the requests can also race for them one by one

    with TestClient(create_app(settings, bundle), raise_server_exceptions=False) as client:
        engine = client.app.state.engine
        assert engine.windows_encoded == 0  # cold: nothing encoded, nothing cached
        # count requests inside the engine at once, to show the 16 really overlapped there
        inside, most, lock = [0], [0], threading.Lock()
        block_ids = engine.block_ids

        def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            try:
                return block_ids(*args, **kwargs)
            finally:
                with lock:
                    inside[0] -= 1

        engine.block_ids = counted
        start = threading.Barrier(n)

        def get(_: int):  # type: ignore[no-untyped-def]
            start.wait(timeout=30)
            return client.get(path, params={"url": url})

        with ThreadPoolExecutor(n) as pool:
            answers = list(pool.map(get, range(n)))
        assert [r.status_code for r in answers] == [200] * n, [r.text for r in answers if r.status_code != 200]
        assert all(r.headers["content-type"] == "image/png" for r in answers)
        assert len({r.content for r in answers}) == 1
        assert most[0] > 1, "the requests never overlapped inside the engine"
        assert engine.windows_encoded == needed  # each window once, not once per request
