"""SSRF guard and bad input: always a 4xx with a JSON detail, never a 500 or a traceback."""

from __future__ import annotations

import os
from pathlib import Path

import morecantile
import numpy as np
import pytest

# every test here goes through the shared app (the real model loaded, an HTTP file server started)
pytestmark = pytest.mark.slow

TMS = morecantile.tms.get("WebMercatorQuad")


def tile_of(client, url: str, z: int = 19):  # type: ignore[no-untyped-def]
    b = client.get("/cog/WebMercatorQuad/tilejson.json", params={"url": url}).json()["bounds"]
    return TMS.tile((b[0] + b[2]) / 2, (b[1] + b[3]) / 2, z)


def assert_json_error(r, status: int) -> str:  # type: ignore[no-untyped-def]
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    detail = r.json()["detail"]
    assert isinstance(detail, str) and detail and "Traceback" not in detail
    return detail


@pytest.mark.parametrize(
    "url",
    [
        "/etc/passwd",
        "file:///etc/hostname",
        "http://169.254.169.254/latest/meta-data/",
        "https://example.com/image.tif",
        "ftp://127.0.0.1/a.tif",
        "/vsicurl/http://example.com/a.tif",
        "s3://some-private-bucket/a.tif",
        "../../etc/passwd",
    ],
)
def test_forbidden_urls_are_403_before_opening(client, url: str) -> None:  # type: ignore[no-untyped-def]
    for path in ("/cog/info", "/cog/WebMercatorQuad/tilejson.json", "/rgb/info"):
        assert_json_error(client.get(path, params={"url": url}), 403)


def test_symlink_escaping_a_root_is_refused(client, rasters: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    link = rasters["gray"].parent / "escape.tif"
    if not link.exists():
        os.symlink("/etc/hostname", link)
    assert_json_error(client.get("/cog/info", params={"url": str(link)}), 403)


def test_unlisted_port_on_allowed_host_is_refused(client, http_server: str, sample: Path) -> None:  # type: ignore[no-untyped-def]
    assert_json_error(client.get("/cog/info", params={"url": f"http://127.0.0.1:1/{sample.name}"}), 403)


def test_missing_local_file_is_404(client, sample: Path) -> None:  # type: ignore[no-untyped-def]
    assert_json_error(client.get("/cog/info", params={"url": str(sample.parent / "nope.tif")}), 404)


@pytest.mark.parametrize("name", ["corrupt", "text", "two_band"])
def test_unreadable_rasters_are_400(client, rasters: dict[str, Path], name: str) -> None:  # type: ignore[no-untyped-def]
    assert_json_error(client.get("/cog/info", params={"url": str(rasters[name])}), 400)
    assert_json_error(client.get("/cog/tiles/WebMercatorQuad/19/1/1.png", params={"url": str(rasters[name])}), 400)


def test_bad_tile_indexes(client, sample: Path) -> None:  # type: ignore[no-untyped-def]
    url = str(sample)
    assert_json_error(client.get("/cog/tiles/WebMercatorQuad/19/9999999/1.png", params={"url": url}), 400)
    assert_json_error(client.get("/cog/tiles/WebMercatorQuad/40/1/1.png", params={"url": url}), 422)
    assert_json_error(client.get("/cog/tiles/WebMercatorQuad/19/-1/1.png", params={"url": url}), 422)
    assert_json_error(client.get("/cog/tiles/NoSuchTMS/19/1/1.png", params={"url": url}), 422)
    assert_json_error(client.get("/cog/tiles/WebMercatorQuad/19/1/1.jpg", params={"url": url}), 422)
    assert_json_error(client.get("/cog/tiles/WebMercatorQuad/19/1/1@9x.png", params={"url": url}), 422)
    assert_json_error(client.get("/cog/tiles/WebMercatorQuad/19/1/1.png"), 422)


def test_tile_outside_image_is_404(client, sample: Path) -> None:  # type: ignore[no-untyped-def]
    t = tile_of(client, str(sample))
    assert_json_error(
        client.get(f"/cog/tiles/WebMercatorQuad/19/{t.x + 50}/{t.y}.png", params={"url": str(sample)}), 404
    )
    assert_json_error(client.get("/cog/point/0,0", params={"url": str(sample)}), 404)


def test_bad_bbox_and_point(client, sample: Path) -> None:  # type: ignore[no-untyped-def]
    for bbox in ("1,2,3", "a,b,c,d", "5,5,4,4", "0,0,500,1"):
        assert_json_error(client.get("/cog/statistics", params={"url": str(sample), "bbox": bbox}), 400)
    assert_json_error(client.get("/cog/point/500,10", params={"url": str(sample)}), 422)


@pytest.mark.parametrize("name", ["gray", "rgb16", "rgbn"])
def test_other_band_layouts_are_served(client, rasters: dict[str, Path], sample: Path, name: str) -> None:  # type: ignore[no-untyped-def]
    """1-band → grey as RGB; 16-bit → fixed per-source stretch; RGBN → the RGB bands."""
    import io

    url = str(rasters[name])
    info = client.get("/cog/info", params={"url": url}).json()
    assert info["analysis"]["bands_used"] == ([1, 1, 1] if name == "gray" else [1, 2, 3])
    t = tile_of(client, url)
    r = client.get(f"/cog/tiles/WebMercatorQuad/19/{t.x}/{t.y}.npy", params={"url": url})
    assert r.status_code == 200
    ids = np.load(io.BytesIO(r.content))
    assert (ids != 65535).mean() > 0.5
    if name == "rgbn":
        ref = client.get(f"/cog/tiles/WebMercatorQuad/19/{t.x}/{t.y}.npy", params={"url": str(sample)})
        assert (np.load(io.BytesIO(ref.content)) == ids).all()
