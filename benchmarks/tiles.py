"""Tile latency: cold vs cached cluster tiles at z17-z19 over the OAM images, and a plain TiTiler RGB tile.

Everything goes through the FastAPI app in-process (routing, reading, encoding, PNG),
one request at a time. Cold = the window cache emptied before the request.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from fastapi.testclient import TestClient

from benchmarks.common import TMS, demo_bundle, machine, oam_images, settings_for
from dinotiles.server.app import create_app


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000


def tiles_near_centre(client: TestClient, url: str, z: int, n: int) -> list[tuple[int, int, int]]:
    w, s, e, n_ = client.get("/cog/WebMercatorQuad/tilejson.json", params={"url": url}).json()["bounds"]
    centre = TMS.tile((w + e) / 2, (s + n_) / 2, z)
    side = int(np.ceil(np.sqrt(n)))
    found = [
        (centre.x + dx, centre.y + dy, z)
        for dy in range(-(side // 2), side - side // 2)
        for dx in range(-(side // 2), side - side // 2)
    ]
    return found[:n]


def timed(client: TestClient, path: str, url: str) -> float:
    start = time.perf_counter()
    r = client.get(path, params={"url": url})
    elapsed = time.perf_counter() - start
    if r.status_code != 200:
        raise SystemExit(f"{path}: {r.status_code} {r.text}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--per-zoom", default="17:3,18:6,19:12", help="zoom:tiles per image")
    parser.add_argument("--repeat", type=int, default=5, help="cached requests per tile")
    args = parser.parse_args()
    images = oam_images()
    bundle = demo_bundle()
    app = create_app(settings_for(images[0].parent), bundle)
    engine = app.state.engine
    print(
        f"machine: {machine()}; bundle {bundle.manifest['variant']} {bundle.manifest['feature_layer']}, "
        f"window {bundle.window}, K={bundle.codebook.k}"
    )
    rows = []
    all_cached: list[float] = []
    all_rgb: list[float] = []
    with TestClient(app) as client:
        for spec in args.per_zoom.split(","):
            z, n = (int(v) for v in spec.split(":"))
            cold, cached, rgb, share = [], [], [], []
            for image in images:
                url = str(image)
                for x, y, _ in tiles_near_centre(client, url, z, n):
                    path = f"/cog/tiles/WebMercatorQuad/{z}/{x}/{y}.png"
                    engine.cache.clear()
                    before = engine.encoder.seconds
                    t = timed(client, path, url)
                    cold.append(t)
                    share.append((engine.encoder.seconds - before) / t)
                    cached += [timed(client, path, url) for _ in range(args.repeat)]
                    rgb_path = f"/rgb/tiles/WebMercatorQuad/{z}/{x}/{y}.png?tilesize=256"
                    timed(client, rgb_path, url)  # warm GDAL's block cache as for the cached cluster tile
                    rgb += [timed(client, rgb_path, url) for _ in range(args.repeat)]
            all_cached += cached
            all_rgb += rgb
            rows.append(
                (
                    z,
                    len(cold),
                    pct(cold, 50),
                    pct(cold, 95),
                    pct(cached, 50),
                    pct(cached, 95),
                    pct(rgb, 50),
                    statistics.mean(share),
                )
            )
    print(
        f"{'zoom':>4} {'tiles':>5} {'cold p50':>9} {'cold p95':>9} {'cached p50':>10} {'cached p95':>10} "
        f"{'RGB p50':>8} {'encoder share':>13}"
    )
    for z, n, c50, c95, h50, h95, r50, sh in rows:
        print(f"{z:>4} {n:>5} {c50:>7.0f}ms {c95:>7.0f}ms {h50:>8.1f}ms {h95:>8.1f}ms {r50:>6.1f}ms {sh:>12.0%}")
    ratio = statistics.median(all_cached) / statistics.median(all_rgb)
    print(f"cached cluster tile / plain TiTiler RGB tile (median over all zooms): {ratio:.2f}x (target <= 1.5x)")
    print(f"encoder share of a cold tile (mean): {statistics.mean(r[-1] for r in rows):.0%} (target >= 70%)")


if __name__ == "__main__":
    main()
