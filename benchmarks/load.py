"""A burst of cold tiles against a real `dinotiles serve`: what completes, what is refused, and memory.

Starts the server as its own process (uvicorn, the real settings), then:
1. RSS after start-up and one warm-up tile;
2. N concurrent *distinct* cold z19 tiles over an OAM image (every one needs inference):
   completed (200), refused (503 + Retry-After), other answers, p50/p95 latency;
   /healthz latency sampled during the burst;
3. RSS right after the burst, after a second burst of other cold tiles (a plateau, not growth,
   shows memory is bounded), and again after ``--settle`` seconds;
4. ``--cached N`` cached tile requests at the same concurrency (the tiles of step 2, now in the
   cache): throughput, p50/p95/p99, errors, and RSS growth over them.

    python -m benchmarks.load [--concurrency 32] [--settle 60] [--max-queue 64]
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

import httpx
import numpy as np

from benchmarks.common import ROOT, TMS, demo_bundle, machine, oam_images


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(port: int, roots: list[Path], max_queue: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DINOTILES_LOCAL_ROOTS": ":".join(str(r) for r in roots),
        "DINOTILES_MAX_QUEUE": str(max_queue),
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


def distinct_tiles(base: str, url: str, n: int, z: int = 19, shift: int = 0) -> list[tuple[int, int]]:
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
    base: str, url: str, tiles: list[tuple[int, int]], z: int
) -> tuple[list[tuple[int, float]], list[float]]:
    async with httpx.AsyncClient(base_url=base, timeout=300) as client:
        health: list[float] = []
        done = asyncio.Event()

        async def probe() -> None:
            while not done.is_set():
                start = time.perf_counter()
                await client.get("/healthz")
                health.append(time.perf_counter() - start)
                await asyncio.sleep(0.2)

        async def one(x: int, y: int) -> tuple[int, float]:
            start = time.perf_counter()
            r = await client.get(f"/cog/tiles/WebMercatorQuad/{z}/{x}/{y}.png", params={"url": url})
            return r.status_code, time.perf_counter() - start

        prober = asyncio.create_task(probe())
        results = await asyncio.gather(*(one(x, y) for x, y in tiles))
        done.set()
        await prober
        return list(results), health


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--settle", type=float, default=60.0)
    parser.add_argument("--max-queue", type=int, default=64)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--cached", type=int, default=10_000, help="cached tile requests after the bursts (0: none)")
    args = parser.parse_args()

    demo_bundle()  # built before the server starts, so start-up is only loading
    image = oam_images()[0]
    base = f"http://127.0.0.1:{args.port}"
    server = start_server(args.port, [image.parent], args.max_queue)
    try:
        wait_ready(base)
        url = str(image)
        tiles = distinct_tiles(base, url, args.concurrency + 1)
        warm = httpx.get(f"{base}/cog/tiles/WebMercatorQuad/19/{tiles[-1][0]}/{tiles[-1][1]}.png", params={"url": url})
        assert warm.status_code == 200, warm.text
        before = rss_mb(server.pid)
        started = time.perf_counter()
        results, health = asyncio.run(burst(base, url, tiles[:-1], 19))
        wall = time.perf_counter() - started
        after = rss_mb(server.pid)
        others = distinct_tiles(base, url, args.concurrency, shift=1)  # the odd columns: new windows
        second, _ = asyncio.run(burst(base, url, others, 19))
        after_second = rss_mb(server.pid)
        time.sleep(args.settle)
        settled = rss_mb(server.pid)
        cached = asyncio.run(cached_run(base, url, tiles[:-1], args.cached, args.concurrency)) if args.cached else None
        after_cached = rss_mb(server.pid)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)

    ok = [t for code, t in results if code == 200]
    refused = sum(1 for code, _ in results if code == 503)
    other = sorted({code for code, _ in results if code not in (200, 503)})
    print(f"machine: {machine()}")
    print(f"image: {image.name}; {len(results)} distinct cold z19 tiles at once; DINOTILES_MAX_QUEUE={args.max_queue}")
    print(f"completed {len(ok)}, 503 {refused}, other {other or 'none'} in {wall:.1f} s")
    if ok:
        print(f"latency of completed tiles: p50 {np.percentile(ok, 50):.2f} s, p95 {np.percentile(ok, 95):.2f} s")
    if health:
        print(
            f"/healthz during the burst: median {statistics.median(health) * 1000:.1f} ms, "
            f"max {max(health) * 1000:.1f} ms ({len(health)} probes)"
        )
    print(
        f"second burst: completed {sum(1 for c, _ in second if c == 200)}, 503 {sum(1 for c, _ in second if c == 503)}"
    )
    print(
        f"RSS: before {before:.0f} MB, after the burst {after:.0f} MB, after a second burst {after_second:.0f} MB, "
        f"{args.settle:.0f} s later {settled:.0f} MB"
    )
    if cached is not None:
        seconds, lat, errors = cached
        ms = [v * 1000 for v in lat]
        print(
            f"{len(lat)} cached tiles at concurrency {args.concurrency}: {len(lat) / seconds:.0f} tiles/s, "
            f"p50 {np.percentile(ms, 50):.0f} ms, p95 {np.percentile(ms, 95):.0f} ms, "
            f"p99 {np.percentile(ms, 99):.0f} ms, "
            f"errors {errors}; RSS {settled:.0f} → {after_cached:.0f} MB ({(after_cached / settled - 1) * 100:+.1f} %)"
        )


if __name__ == "__main__":
    main()
