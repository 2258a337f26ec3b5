"""Load against a real `dinotiles serve` (uvicorn, real settings, real OAM imagery), printed side by side.

1. batching **on** (DINOTILES_BATCH_SIZE=8) and **off** (=1), each on a fresh server: N distinct cold
   z19 tiles (every one needs inference), at most C in flight: throughput, p50/p95, 503s at the
   configured DINOTILES_MAX_QUEUE, other answers, and /healthz latency sampled during the burst;
2. on the batching server, ``--cached`` requests for tiles already computed at concurrency C:
   throughput, p50/p95/p99, errors, and RSS before/after (bounded memory: growth well under 10 %).

    python -m benchmarks.load [--tiles 64] [--concurrency 32] [--cached 10000] [--max-queue 64]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.common import ROOT, TMS, demo_bundle, machine, oam_images


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(port: int, roots: list[Path], max_queue: int, batch_size: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DINOTILES_LOCAL_ROOTS": ":".join(str(r) for r in roots),
        "DINOTILES_MAX_QUEUE": str(max_queue),
        "DINOTILES_BATCH_SIZE": str(batch_size),
        "DINOTILES_REQUEST_TIMEOUT": "300",
        "DINOTILES_TILE_TIMEOUT": "300",  # measure the queue, not the deadline
    }
    exe = Path(sys.executable).with_name("dinotiles")
    return subprocess.Popen(
        [str(exe), "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def wait_ready(base: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit("server did not start")


def distinct_tiles(base: str, url: str, n: int, z: int = 19) -> list[tuple[int, int]]:
    """n tiles around the image centre whose windows do not overlap (so each needs its own inference)."""
    w, s, e, n_ = httpx.get(f"{base}/cog/WebMercatorQuad/tilejson.json", params={"url": url}, timeout=60).json()[
        "bounds"
    ]
    centre = TMS.tile((w + e) / 2, (s + n_) / 2, z)
    side = int(np.ceil(np.sqrt(n)))
    step = 2  # a z19 tile is ~76 m, a window core 91 m: every other tile lands in other windows
    tiles = [
        (centre.x + step * (dx - side // 2), centre.y + step * (dy - side // 2))
        for dy in range(side)
        for dx in range(side)
    ]
    return tiles[:n]


async def cached_run(
    base: str, url: str, tiles: list[tuple[int, int]], n: int, concurrency: int
) -> tuple[float, list[float], int]:
    """n requests for already-computed tiles, `concurrency` at a time: (seconds, latencies, errors)."""
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
        queue = list(range(n))

        async def worker() -> None:
            nonlocal errors
            while queue:
                k = queue.pop()
                x, y = tiles[k % len(tiles)]
                start = time.perf_counter()
                r = await client.get(f"/cog/tiles/WebMercatorQuad/19/{x}/{y}.png", params={"url": url})
                latencies.append(time.perf_counter() - start)
                errors += r.status_code != 200

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started, latencies, errors


async def burst(
    base: str, url: str, tiles: list[tuple[int, int]], concurrency: int
) -> tuple[list[tuple[int, float]], list[float], float]:
    """Every tile once, at most ``concurrency`` in flight: ([(status, seconds)], healthz seconds, wall)."""
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as client:
        health: list[float] = []
        done = asyncio.Event()
        slots = asyncio.Semaphore(concurrency)

        async def probe() -> None:
            while not done.is_set():
                start = time.perf_counter()
                await client.get("/healthz")
                health.append(time.perf_counter() - start)
                await asyncio.sleep(0.2)

        async def one(x: int, y: int) -> tuple[int, float]:
            async with slots:
                start = time.perf_counter()
                r = await client.get(f"/cog/tiles/WebMercatorQuad/19/{x}/{y}.png", params={"url": url})
                return r.status_code, time.perf_counter() - start

        prober = asyncio.create_task(probe())
        started = time.perf_counter()
        results = await asyncio.gather(*(one(x, y) for x, y in tiles))
        wall = time.perf_counter() - started
        done.set()
        await prober
        return list(results), health, wall


def cold_phase(args: argparse.Namespace, image: Path, batch_size: int) -> dict[str, Any]:
    """A fresh server, one warm-up tile, then the cold burst; the cached run on the batching server."""
    base = f"http://127.0.0.1:{args.port}"
    server = start_server(args.port, [image.parent], args.max_queue, batch_size)
    out: dict[str, Any] = {"batch_size": batch_size}
    try:
        wait_ready(base)
        url = str(image)
        tiles = distinct_tiles(base, url, args.tiles + 1)
        warm = httpx.get(
            f"{base}/cog/tiles/WebMercatorQuad/19/{tiles[-1][0]}/{tiles[-1][1]}.png", params={"url": url}, timeout=300
        )
        assert warm.status_code == 200, warm.text
        out["rss_start"] = rss_mb(server.pid)
        out["cold"], out["health"], out["wall"] = asyncio.run(burst(base, url, tiles[:-1], args.concurrency))
        metrics = httpx.get(f"{base}/metrics", timeout=30).text
        out["batches"] = {
            int(line.split('size="')[1].split('"')[0]): float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("dinotiles_encoder_batches_total{")
        }
        out["rss_cold"] = rss_mb(server.pid)
        if args.cached and batch_size > 1:
            done = [t for t, (code, _) in zip(tiles[:-1], out["cold"], strict=True) if code == 200]
            out["cached"] = asyncio.run(cached_run(base, url, done, args.cached, args.concurrency))
            out["rss_cached"] = rss_mb(server.pid)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    return out


def report(phase: dict[str, Any], n: int) -> None:
    results = phase["cold"]
    ok = [t for code, t in results if code == 200]
    refused = sum(1 for code, _ in results if code == 503)
    other = sorted({code for code, _ in results if code not in (200, 503)})
    label = "on (batch 8)" if phase["batch_size"] > 1 else "off (batch 1)"
    line = (
        f"batching {label:14s} {len(ok):3d}/{n} ok, 503 {refused:2d}, other {other or 'none'}; "
        f"{len(ok) / phase['wall']:.2f} tiles/s in {phase['wall']:.1f} s"
    )
    if ok:
        line += f"; p50 {np.percentile(ok, 50):.1f} s, p95 {np.percentile(ok, 95):.1f} s"
    health = phase["health"]
    if health:
        line += f"; /healthz median {statistics.median(health) * 1000:.0f} ms, max {max(health) * 1000:.0f} ms"
    windows = sum(size * count for size, count in phase["batches"].items())
    runs = sum(phase["batches"].values())
    if runs:
        line += f"; {windows:.0f} windows in {runs:.0f} encoder runs (mean batch {windows / runs:.1f})"
    print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiles", type=int, default=64, help="distinct cold tiles per phase")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-queue", type=int, default=64)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--cached", type=int, default=10_000, help="cached tile requests (0: none)")
    args = parser.parse_args()

    demo_bundle()  # built before the server starts, so start-up is only loading
    image = oam_images()[0]
    on = cold_phase(args, image, batch_size=8)
    off = cold_phase(args, image, batch_size=1)
    print(f"machine: {machine()}")
    print(
        f"image: {image.name}; {args.tiles} distinct cold z19 tiles, at most {args.concurrency} in flight; "
        f"DINOTILES_MAX_QUEUE={args.max_queue}"
    )
    report(on, args.tiles)
    report(off, args.tiles)
    if "cached" in on:
        seconds, lat, errors = on["cached"]
        ms = [v * 1000 for v in lat]
        print(
            f"{len(lat)} cached tiles at concurrency {args.concurrency}: {len(lat) / seconds:.0f} tiles/s, "
            f"p50 {np.percentile(ms, 50):.0f} ms, p95 {np.percentile(ms, 95):.0f} ms, "
            f"p99 {np.percentile(ms, 99):.0f} ms, errors {errors}; "
            f"RSS {on['rss_cold']:.0f} → {on['rss_cached']:.0f} MB "
            f"({(on['rss_cached'] / on['rss_cold'] - 1) * 100:+.1f} %)"
        )
    print(f"RSS (batching on): start {on['rss_start']:.0f} MB, after the cold burst {on['rss_cold']:.0f} MB")


if __name__ == "__main__":
    main()
