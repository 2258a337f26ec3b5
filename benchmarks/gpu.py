"""One prepared run of every serving figure on one machine (a GPU node, or this CPU with ``--small``).

Prints, in one run, with the torch backend (CUDA + bf16 where there is a GPU, else CPU fp32):
1. the seed notebook's method (torch eager, 224 px chips, one nearest-centroid search per patch in
   Python) vs `render`'s path (448 px windows through the engine and the torch backend): patches/s
   and their ratio, over the same region of the same image;
2. encoder windows/s by batch size (fp32 and, on a GPU, bf16; bf16 cluster-ID agreement with fp32);
3. read-only windows/s with N threads, each with its own reader (the I/O and resampling limit);
4. end-to-end cold z18 tiles/s through the real app (`dinotiles serve`, uvicorn) at concurrency C;
5. cached tiles/s through the same server.

    python -m benchmarks.gpu --bundle DIR --images DIR [--small]

``benchmarks/gpu.sh`` wraps it for the device machine (wheels, paths); ``tests/test_benchmarks.py``
runs ``--small`` here so that it cannot rot.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.common import seed_search

ROOT = Path(__file__).resolve().parent.parent


def log(message: str) -> None:
    print(message, flush=True)


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__} CUDA {torch.version.cuda}"
    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}"


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def real_windows(image: Path, window: int, n: int) -> np.ndarray:
    """n windows of real imagery, spread over the image (repeated if it is small)."""
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(image) as ds:
        rows = max(1, (ds.height - window) // window)
        cols = max(1, (ds.width - window) // window)
        spots = [((k // cols) % rows * window, k % cols * window) for k in range(n)]
        return np.stack([ds.read((1, 2, 3), window=Window(c, r, window, window), boundless=True) for r, c in spots])


# -- 1. seed method vs render ------------------------------------------------------------------
def seed_method(bundle: Any, image: Path, side: int) -> tuple[int, float]:
    """The notebook's way over the top-left side × side patches: 224 px chips, eager attention, a loop."""
    import torch
    from transformers import AutoModel

    from dinotiles.core.sources import band_plan, open_dataset

    chip, keep = 224, 10  # 16 × 16 patches a chip, the central 10 × 10 kept
    border = (16 - keep) // 2
    device = "cuda" if torch.cuda.is_available() else "cpu"
    directory = bundle.root / bundle.manifest["torch"]["dir"]
    model = AutoModel.from_pretrained(str(directory), attn_implementation="eager", dtype=torch.float32).to(device)
    model.eval()
    centroids = bundle.codebook.centroids / np.linalg.norm(bundle.codebook.centroids, axis=1, keepdims=True)
    basis = bundle.codebook.position_basis
    mean = torch.tensor((0.485, 0.456, 0.406), device=device).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225), device=device).view(1, 3, 1, 1)
    ds = open_dataset(str(image))
    plan = band_plan(ds)
    done = 0
    start = time.perf_counter()
    for r in range(0, side, keep):
        for c in range(0, side, keep):
            y0, x0 = (r - border) * 14, (c - border) * 14
            img = plan.to_uint8(
                ds.read(list(plan.indexes), window=((y0, y0 + chip), (x0, x0 + chip)), boundless=True, fill_value=0)
            )
            x = (torch.from_numpy(img[None]).to(device).float() / 255 - mean) / std
            with torch.no_grad():
                tokens = model(pixel_values=x).last_hidden_state
            grid = tokens[0, 1:].reshape(16, 16, -1).cpu().numpy()[border : border + keep, border : border + keep]
            done += seed_search(grid, centroids, basis)  # one search per patch, as the notebook did
    return done, time.perf_counter() - start


def render_region(engine: Any, image: Path, side: int | None) -> tuple[int, float]:
    """The render path (engine → queue → torch backend) over the top-left region, or the whole scene."""
    from dinotiles.core.reader import cluster_reader
    from dinotiles.core.sources import Source
    from dinotiles.server.settings import Settings

    settings = Settings().replace(local_roots=(image.parent,))
    reader = cluster_reader(engine, settings.source_policy(), settings.request_limits())
    with reader(Source.local(str(image))) as src:
        grid = src.view.grid
        rows, cols = (grid.rows, grid.cols) if side is None else (min(side, grid.rows), min(side, grid.cols))
        start = time.perf_counter()
        ids = engine.mosaic(src.view, 0, rows, 0, cols)
        sync()
        return int(ids.size), time.perf_counter() - start


# -- 2. encoder throughput -------------------------------------------------------------------
def encoder_rates(encoder: Any, windows: np.ndarray, sizes: list[int], seconds: float) -> dict[int, float]:
    out = {}
    for b in sizes:
        batch = np.resize(windows, (b, *windows.shape[1:]))
        encoder.cluster_ids(batch)  # warm-up (kernels, allocator)
        sync()
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds or n == 0:
            encoder.cluster_ids(batch)
            n += b
        sync()
        out[b] = n / (time.perf_counter() - start)
    return out


# -- 3. reads ----------------------------------------------------------------------------------
def read_rates(engine: Any, image: Path, threads: list[int], per_thread: int) -> dict[int, float]:
    """Windows/s read and resampled to 0.25 m by N threads at once, each with its own reader."""
    from dinotiles.core.grid import read_window
    from dinotiles.core.reader import cluster_reader
    from dinotiles.core.sources import Source
    from dinotiles.server.settings import Settings

    settings = Settings().replace(local_roots=(image.parent,))
    reader = cluster_reader(engine, settings.source_policy(), settings.request_limits())
    out = {}
    for n in threads:
        barrier = threading.Barrier(n + 1)

        def work(k: int, count: int = n, barrier: threading.Barrier = barrier) -> None:
            with reader(Source.local(str(image))) as src:
                g = src.view.grid
                cells = [(i, j) for i in range(g.window_rows) for j in range(g.window_cols)]
                barrier.wait()
                for m in range(per_thread):
                    i, j = cells[(k + m * count) % len(cells)]
                    read_window(src.view.reader, src.view.plan, g, i, j)

        pool = [threading.Thread(target=work, args=(k,)) for k in range(n)]
        for t in pool:
            t.start()
        barrier.wait()
        start = time.perf_counter()
        for t in pool:
            t.join()
        out[n] = n * per_thread / (time.perf_counter() - start)
    return out


# -- 4, 5. the real app ------------------------------------------------------------------------
def serve(bundle: Path, images: Path, port: int, batch: int, encoder: str, precision: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DINOTILES_BUNDLE": str(bundle),
        "DINOTILES_LOCAL_ROOTS": str(images),
        "DINOTILES_ENCODER": encoder,
        "DINOTILES_PRECISION": precision,
        "DINOTILES_BATCH_SIZE": str(batch),
        "DINOTILES_MAX_QUEUE": "4096",
        "DINOTILES_CACHE_BYTES": str(2 << 30),
        "DINOTILES_TILE_TIMEOUT": "600",
        "DINOTILES_REQUEST_TIMEOUT": "600",
    }
    cmd = [sys.executable, "-m", "dinotiles.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"server exited: {server.stderr.read().decode()[-2000:] if server.stderr else ''}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.5)
    server.kill()
    raise SystemExit("server did not start in 300 s")


def z18_tiles(base: str, images: list[Path], limit: int | None) -> list[tuple[str, int, int]]:
    import morecantile

    tms = morecantile.tms.get("WebMercatorQuad")
    out = []
    for image in images:
        tj = httpx.get(f"{base}/cog/WebMercatorQuad/tilejson.json", params={"url": str(image)}, timeout=60).json()
        centre = tms.tile(tj["center"][0], tj["center"][1], 18)
        west, south, east, north = tj["bounds"]
        tiles = sorted(
            tms.tiles(west, south, east, north, [18]), key=lambda t: abs(t.x - centre.x) + abs(t.y - centre.y)
        )
        # edge tiles that only touch the image are 404 (outside bounds), as in TiTiler: keep those inside
        tiles = [t for t in tiles if _inside(tms.bounds(t), tj["bounds"])]
        out += [(str(image), t.x, t.y) for t in tiles]
    return out[:limit] if limit else out


def _inside(tile: Any, bounds: list[float]) -> bool:
    w, s, e, n = bounds
    return tile.left >= w and tile.right <= e and tile.bottom >= s and tile.top <= n


async def fetch_all(base: str, tiles: list[tuple[str, int, int]], concurrency: int) -> tuple[float, list[int]]:
    """Every tile once, ``concurrency`` at a time: (seconds, statuses); the first failure is printed."""
    slots = asyncio.Semaphore(concurrency)
    failed: list[int] = []
    async with httpx.AsyncClient(
        base_url=base, timeout=600, limits=httpx.Limits(max_connections=concurrency)
    ) as client:

        async def one(url: str, x: int, y: int) -> int:
            async with slots:
                r = await client.get(f"/cog/tiles/WebMercatorQuad/18/{x}/{y}.png", params={"url": url})
                if r.status_code != 200 and not failed:
                    failed.append(r.status_code)
                    log(f"    18/{x}/{y}: {r.status_code} {r.text[:300]}")
                return r.status_code

        start = time.perf_counter()
        codes = await asyncio.gather(*(one(*t) for t in tiles))
        return time.perf_counter() - start, list(codes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True, help="folder of 0.25 m COGs (the two OAM images)")
    parser.add_argument("--small", action="store_true", help="CPU-sized run (tests): small regions, few tiles")
    parser.add_argument("--port", type=int, default=8799)
    args = parser.parse_args()

    import torch

    from dinotiles.core.bundle import load_bundle
    from dinotiles.core.cache import ByteLRU
    from dinotiles.core.engine import ClusterEngine
    from dinotiles.core.inference import InferenceQueue
    from dinotiles.torch_encoder import TorchEncoder

    gpu = torch.cuda.is_available()
    small = args.small
    images = sorted(args.images.glob("*.tif"))
    if not images:
        raise SystemExit(f"no .tif in {args.images}")
    bundle = load_bundle(args.bundle)
    precision = "bf16" if gpu else "fp32"
    log(f"device: {device_name()}; bundle {bundle.manifest.get('variant')} {bundle.manifest['feature_layer']}")

    fast = TorchEncoder(bundle, precision)
    engine = ClusterEngine(bundle, fast, ByteLRU(1 << 30), InferenceQueue(fast, 1 << 20, 8 if small else 64, 1.0))

    # 1. seed vs render, the same region (the seed is slow: a smaller region, patches/s compared)
    seed_side, render_side = (20, 48) if small else (100, None)
    n_seed, t_seed = seed_method(bundle, images[0], seed_side)
    n_ours, t_ours = render_region(engine, images[0], render_side)
    log(f"[1] seed method (torch eager fp32, 224 px chips, per-patch loop): {n_seed / t_seed:10.0f} patches/s")
    log(f"[1] render (torch {precision}, 448 px windows, batched):          {n_ours / t_ours:10.0f} patches/s")
    log(f"[1] ratio render / seed: {(n_ours / t_ours) / (n_seed / t_seed):.2f}x ({n_ours} vs {n_seed} patches)")

    # 2. encoder windows/s by batch size
    windows = real_windows(images[0], bundle.window, 8 if small else 64)
    sizes = [1, 2] if small else [1, 4, 16, 32, 64, 128]
    seconds = 0.5 if small else 3.0
    encoders: list[tuple[str, Any]] = [(precision, fast)]
    if gpu:
        encoders.append(("fp32", TorchEncoder(bundle, "fp32")))
    if bundle.model_path.exists():  # ONNX Runtime beside it, where the bundle has the graph (not the GPU kit)
        from dinotiles.core.encoder import Encoder

        onnx = Encoder.for_bundle(bundle)
        rates = encoder_rates(onnx, windows, sizes, seconds)
        name = f"onnxruntime {onnx.providers[0]}"
        log(f"[2] encoder {name}: " + ", ".join(f"batch {b}: {r:.1f} windows/s" for b, r in rates.items()))
    for name, enc in encoders:
        rates = encoder_rates(enc, windows, sizes, seconds)
        log(f"[2] encoder torch {name}: " + ", ".join(f"batch {b}: {r:.1f} windows/s" for b, r in rates.items()))
    reference = encoders[-1][1].cluster_ids(windows[:8])
    agree = (fast.cluster_ids(windows[:8]) == reference).mean()
    log(f"[2] cluster IDs {precision} vs fp32: {agree * 100:.2f} % equal (8 real windows)")

    # 3. reads
    threads = [1, 2] if small else [1, 4, 8, 16]
    reads = read_rates(engine, images[0], threads, 2 if small else 24)
    log("[3] reads (COG → 448 px at 0.25 m): " + ", ".join(f"{n} threads: {r:.1f} windows/s" for n, r in reads.items()))

    # 4, 5. the real app
    concurrency = 4 if small else 64
    server = serve(args.bundle, args.images, args.port, 8 if small else 32, "torch", precision)
    base = f"http://127.0.0.1:{args.port}"
    try:
        tiles = z18_tiles(base, images, 4 if small else None)
        seconds_cold, codes = asyncio.run(fetch_all(base, tiles, concurrency))
        ok = sum(c == 200 for c in codes)
        log(
            f"[4] cold z18 tiles through the app: {ok}/{len(tiles)} ok, "
            f"{ok / seconds_cold:.2f} tiles/s at c={concurrency}"
        )
        repeat = (tiles * (50 if small else 5000 // max(1, len(tiles)) + 1))[: 50 if small else 5000]
        seconds_cached, codes = asyncio.run(fetch_all(base, repeat, concurrency))
        ok = sum(c == 200 for c in codes)
        log(f"[5] cached tiles: {ok}/{len(repeat)} ok, {ok / seconds_cached:.0f} tiles/s at c={concurrency}")
        metrics = httpx.get(f"{base}/metrics", timeout=30).text
        batches = [line for line in metrics.splitlines() if line.startswith("dinotiles_encoder_batches_total{")]
        log("[4] encoder batches in the app: " + "; ".join(b.split("{", 1)[1] for b in batches))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
