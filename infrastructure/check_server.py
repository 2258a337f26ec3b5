"""Check a running dinotiles (a container, a pod) the way a user would: health, viewer, a real cluster tile.

    python infrastructure/check_server.py http://127.0.0.1:18000 /data/image.tif
Exit 0 when every check passes; prints one line per check.
"""

from __future__ import annotations

import sys
import time

import httpx
import morecantile


def wait_healthy(base: str, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/healthz", timeout=3).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise SystemExit(f"{base}/healthz did not answer within {seconds:.0f} s")


def main(base: str, url: str) -> None:
    wait_healthy(base)
    print("healthz: ok")
    viewer = httpx.get(f"{base}/", timeout=30)
    assert viewer.status_code == 200 and "/static/leaflet/leaflet.js" in viewer.text, viewer.status_code
    assert httpx.get(f"{base}/static/leaflet/leaflet.js", timeout=30).status_code == 200
    print("viewer: ok")
    tj = httpx.get(f"{base}/cog/WebMercatorQuad/tilejson.json", params={"url": url}, timeout=120)
    assert tj.status_code == 200, tj.text
    b, z = tj.json()["bounds"], tj.json()["maxzoom"]
    t = morecantile.tms.get("WebMercatorQuad").tile((b[0] + b[2]) / 2, (b[1] + b[3]) / 2, z)
    tile_url = tj.json()["tiles"][0].replace("{z}", str(t.z)).replace("{x}", str(t.x)).replace("{y}", str(t.y))
    tile = httpx.get(tile_url, timeout=300)
    assert tile.status_code == 200 and tile.content[:4] == b"\x89PNG", (tile.status_code, tile.text[:200])
    print(f"cluster tile z{t.z}/{t.x}/{t.y}: ok ({len(tile.content)} bytes, {tile.headers.get('server-timing')})")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
