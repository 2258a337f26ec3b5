"""Redis behind the in-process cache, with a real redis-server: replicas share inference, faults cost nothing."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import morecantile
import numpy as np
import pytest

from dinotiles.core.shared_cache import SharedCache, decode_ids, encode_ids
from tests.conftest import free_port, wait_for

REDIS = shutil.which("redis-server")
TMS = morecantile.tms.get("WebMercatorQuad")


def start_redis(port: int) -> subprocess.Popen[bytes]:
    if REDIS is None:
        pytest.fail("redis-server is missing: apt-get install redis-server (.ci/run does)")
    proc = subprocess.Popen(
        [
            REDIS,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--maxmemory",
            "64mb",
            "--maxmemory-policy",
            "allkeys-lru",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.05)
    proc.kill()
    pytest.fail("redis-server did not start")


@pytest.fixture
def redis_port() -> Iterator[int]:
    port = free_port()
    proc = start_redis(port)
    try:
        yield port
    finally:
        proc.kill()
        proc.wait(5)


def test_ids_round_trip_compressed() -> None:
    ids = np.random.default_rng(0).integers(0, 512, (26, 26)).astype(np.uint16)
    ids[:3] = 65535
    blob = encode_ids(ids)
    assert np.array_equal(decode_ids(blob), ids) and len(blob) < ids.nbytes
    with pytest.raises(ValueError):
        decode_ids(blob[:4] + b"garbage")


@pytest.mark.slow
def test_redis_down_is_a_miss_counted_once_and_retried(redis_port: int, caplog) -> None:  # type: ignore[no-untyped-def]
    cache = SharedCache(f"redis://127.0.0.1:{free_port()}/0", pause=0.2)  # nothing listens there
    key = ("fp", "/a.tif:1:2", 0, 0)
    ids = np.zeros((26, 26), np.uint16)
    start = time.monotonic()
    assert cache.get_many([key]) == [None]
    cache.put_many([(key, ids)])
    assert cache.get_many([key]) == [None]  # paused: not even tried
    assert time.monotonic() - start < 2 and cache.errors == 1
    assert sum("unavailable" in r.getMessage() for r in caplog.records) == 1
    live = SharedCache(f"redis://127.0.0.1:{redis_port}/0")
    live.put_many([(key, ids)])
    got = live.get_many([key, ("fp", "/b.tif", 0, 0)])
    assert got[0] is not None and np.array_equal(got[0], ids) and got[1] is None


def serve(port: int, bundle, sample: Path, redis_url: str) -> subprocess.Popen[bytes]:  # type: ignore[no-untyped-def]
    env = {
        **os.environ,
        "DINOTILES_BUNDLE": str(bundle.root),
        "DINOTILES_LOCAL_ROOTS": str(sample.parent),
        "DINOTILES_REDIS_URL": redis_url,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "dinotiles.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def health(base: str) -> dict:  # type: ignore[type-arg]
    return httpx.get(f"{base}/healthz", timeout=10).json()


@pytest.mark.slow
def test_two_replicas_share_windows_and_survive_redis_restarts(bundle, sample: Path) -> None:  # type: ignore[no-untyped-def]
    redis_port = free_port()
    redis = start_redis(redis_port)
    url = f"redis://127.0.0.1:{redis_port}/0"
    ports = [free_port(), free_port()]
    servers = [serve(p, bundle, sample, url) for p in ports]
    a, b = (f"http://127.0.0.1:{p}" for p in ports)
    try:
        for base in (a, b):
            wait_for(base + "/healthz", 120)
        tj = httpx.get(f"{a}/cog/WebMercatorQuad/tilejson.json", params={"url": str(sample)}, timeout=60).json()
        bounds, z = tj["bounds"], tj["maxzoom"]
        tiles = list(TMS.tiles(*bounds, zooms=[z]))

        def tile(base: str, t: morecantile.Tile) -> httpx.Response:
            return httpx.get(
                f"{base}/cog/tiles/WebMercatorQuad/{t.z}/{t.x}/{t.y}.npy", params={"url": str(sample)}, timeout=300
            )

        first = tile(a, tiles[0])
        assert first.status_code == 200 and health(a)["windows_encoded"] > 0
        again = tile(b, tiles[0])
        assert again.content == first.content
        assert health(b)["windows_encoded"] == 0  # the second replica encoded nothing
        assert health(b)["shared_cache"]["hits"] > 0

        redis.kill()
        redis.wait(5)
        down = tile(b, tiles[len(tiles) // 2])  # Redis gone mid-run: still served, computed
        assert down.status_code == 200 and health(b)["shared_cache"]["errors"] >= 1
        assert health(b)["windows_encoded"] > 0
        metrics = httpx.get(f"{b}/metrics", timeout=10).text
        assert "dinotiles_redis_errors" in metrics and "dinotiles_windows_encoded_total" in metrics

        redis = start_redis(redis_port)  # back: used again after the pause
        time.sleep(6)
        encoded_a = health(a)["windows_encoded"]
        fresh = tile(b, tiles[-1])
        assert fresh.status_code == 200
        assert tile(a, tiles[-1]).content == fresh.content
        assert health(a)["windows_encoded"] == encoded_a  # a got b's windows from the restarted Redis
    finally:
        for proc in servers:
            proc.terminate()
            proc.wait(10)
        redis.kill()
        redis.wait(5)
