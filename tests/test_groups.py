"""Groups, legend, colormap and highlight: units on the shipped codebook, and the routes on real tiles."""

from __future__ import annotations

import io
import json
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dinotiles.core.bundle import Bundle, load_codebook
from dinotiles.core.colors import Style, StyleError, parse_colormap, parse_highlight
from dinotiles.core.encoder import NODATA
from dinotiles.core.groups import cut, hierarchy, min_delta_e, palette

SHIPPED = Path(str(files("dinotiles.core") / "data" / "codebook"))


@pytest.fixture(scope="module")
def codebook():  # type: ignore[no-untyped-def]
    meta = json.loads((SHIPPED / "codebook.json").read_text())
    manifest = {"weights": {"sha256": meta["weights_sha256"]}, "feature_layer": meta["feature_layer"]}
    manifest["embed_dim"] = meta["embed_dim"]
    return load_codebook(SHIPPED, manifest)


def test_group_colours_are_far_apart_unlike_the_cluster_colours(codebook) -> None:  # type: ignore[no-untyped-def]
    assert min_delta_e(codebook.colors) < 5  # the t-SNE colours: near-duplicates exist (why groups exist)
    assert min_delta_e(palette()[:16]) > 35 and min_delta_e(palette()[:64]) > 20
    assert len({tuple(c) for c in palette()}) == 64


def test_the_shipped_codebook_carries_its_hierarchy_and_cuts_are_nested(codebook) -> None:  # type: ignore[no-untyped-def]
    assert codebook.hierarchy is not None and np.allclose(codebook.hierarchy, hierarchy(codebook.centroids, "cosine"))
    for n in (2, 8, 16, 64):
        labels = codebook.groups(n)
        assert labels.shape == (codebook.k,) and labels.max() + 1 == n
        assert np.bincount(labels).min() >= 1
        assert np.bincount(labels).max() < 0.8 * codebook.k  # Ward: no group swallows the codebook
    # a tree: each of the 16 groups lies inside one of the 8
    fine, coarse = codebook.groups(16), codebook.groups(8)
    assert all(len(set(coarse[fine == g])) == 1 for g in range(16))
    assert np.array_equal(cut(codebook.tree, 16), fine)  # deterministic numbering
    with pytest.raises(ValueError, match="between 2 and 64"):
        codebook.groups(65)


def test_style_maps_ids_then_colours(codebook) -> None:  # type: ignore[no-untyped-def]
    ids = np.array([[[0, 5, 511, NODATA]]], np.uint16)
    style = Style(groups=8)
    mapped = style.ids(ids, codebook)
    assert mapped[0, 0, 3] == NODATA and list(mapped[0, 0, :3]) == [codebook.groups(8)[i] for i in (0, 5, 511)]
    rgb, alpha = style.rgba(mapped, codebook)
    assert list(alpha[0]) == [255, 255, 255, 0]
    assert list(rgb[:, 0, 0]) == list(palette()[mapped[0, 0, 0]])
    # highlight: the chosen id keeps its colour, others fade
    hl = Style(highlight=(5,))
    rgb, alpha = hl.rgba(ids, codebook)
    assert list(rgb[:, 0, 1]) == list(codebook.colors[5]) and alpha[0, 1] == 255
    assert alpha[0, 0] < 255 and alpha[0, 3] == 0
    # colormap: named ids in the user's colours, the rest transparent
    cm = Style(colormap={0: (1, 2, 3, 255)})
    rgb, alpha = cm.rgba(ids, codebook)
    assert list(rgb[:, 0, 0]) == [1, 2, 3] and list(alpha[0]) == [255, 0, 0, 0]
    assert Style(groups=8).key != Style().key != Style(highlight=(1,)).key


@pytest.mark.parametrize(
    "text",
    ["{", "[]", "{}", '{"a": [1,2,3]}', '{"1": [1,2]}', '{"1": [1,2,300]}', '{"1": [1,2,true]}', '{"65535": [1,2,3]}'],
)
def test_bad_colormaps_are_refused_with_a_reason(text: str) -> None:
    with pytest.raises(StyleError):
        parse_colormap(text)


def test_highlight_parsing_and_checks(codebook) -> None:  # type: ignore[no-untyped-def]
    assert parse_highlight("3, 1,3") == (1, 3)
    with pytest.raises(StyleError):
        parse_highlight("1;2")
    with pytest.raises(StyleError, match=r"0\.\.7"):
        Style(groups=8, highlight=(8,)).check(codebook)


# -- the routes ------------------------------------------------------------------------------
def _tile(client, sample: Path, suffix: str, **params: str):  # type: ignore[no-untyped-def]
    from tests.test_tiles import TMS, centre

    lon, lat = centre(client, str(sample))
    t = TMS.tile(lon, lat, 19)
    return client.get(f"/cog/tiles/WebMercatorQuad/19/{t.x}/{t.y}{suffix}", params={"url": str(sample), **params})


@pytest.mark.slow
def test_group_tiles_speak_of_groups(client, sample: Path, bundle: Bundle) -> None:  # type: ignore[no-untyped-def]
    clusters = np.load(io.BytesIO(_tile(client, sample, ".npy").content))
    r = _tile(client, sample, ".npy", groups="8")
    assert r.status_code == 200
    groups = np.load(io.BytesIO(r.content))
    valid = clusters != NODATA
    assert valid.any() and np.array_equal(groups[valid], bundle.codebook.groups(8)[clusters[valid]])
    assert np.all(groups[~valid] == NODATA)
    png = np.asarray(Image.open(io.BytesIO(_tile(client, sample, ".png", groups="8").content)).convert("RGBA"))
    shown = {tuple(px[:3]) for px in png[png[..., 3] == 255].reshape(-1, 4)}
    assert shown <= {tuple(c) for c in palette()[:8]}
    plain = _tile(client, sample, ".png")
    assert _tile(client, sample, ".png", groups="8").headers["etag"] != plain.headers["etag"]


@pytest.mark.slow
def test_highlight_and_colormap_change_the_picture(client, sample: Path) -> None:  # type: ignore[no-untyped-def]
    ids = np.load(io.BytesIO(_tile(client, sample, ".npy").content))
    top = int(np.bincount(ids[ids != NODATA]).argmax())
    png = np.asarray(Image.open(io.BytesIO(_tile(client, sample, ".png", highlight=str(top)).content)).convert("RGBA"))
    assert np.all(png[ids == top][:, 3] == 255)
    others = (ids != top) & (ids != NODATA)
    assert others.any() and np.all(png[others][:, 3] < 255)
    cmap = json.dumps({str(top): [255, 0, 0]})
    png = np.asarray(Image.open(io.BytesIO(_tile(client, sample, ".png", colormap=cmap).content)).convert("RGBA"))
    assert np.all(png[ids == top] == [255, 0, 0, 255]) and np.all(png[others][:, 3] == 0)


@pytest.mark.slow
def test_legend_statistics_point_and_tilejson_agree_on_groups(client, sample: Path, bundle: Bundle) -> None:  # type: ignore[no-untyped-def]
    legend = client.get("/cog/legend", params={"groups": "8"}).json()
    assert [g["group"] for g in legend["groups"]] == list(range(8))
    members = sorted(c for g in legend["groups"] for c in g["clusters"])
    assert members == list(range(bundle.codebook.k))  # every cluster in exactly one group
    assert {tuple(g["color"]) for g in legend["groups"]} == {tuple(c) for c in palette()[:8]}
    tj = client.get("/cog/WebMercatorQuad/tilejson.json", params={"url": str(sample), "groups": "8"}).json()
    assert tj["legend"].endswith("/cog/legend?groups=8") and "groups=8" in tj["tiles"][0]
    b = tj["bounds"]
    cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
    box = f"{cx - 0.0005},{cy - 0.0005},{cx + 0.0005},{cy + 0.0005}"
    stats = client.get("/cog/statistics", params={"url": str(sample), "bbox": box, "groups": "8"}).json()
    assert stats["groups"] and abs(sum(g["share"] for g in stats["groups"]) - 1) < 1e-6
    assert sum(g["count"] for g in stats["groups"]) == stats["valid_patches"]
    labels = bundle.codebook.groups(8)
    for g in stats["groups"]:
        assert all(labels[c] == g["group"] for c in g["clusters"])
    point = client.get(f"/cog/point/{cx},{cy}", params={"url": str(sample), "groups": "8"}).json()
    assert point["band_names"] == ["group"] and point["values"] == [labels[point["cluster"]]]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"groups": "1"}, 422),
        ({"groups": "65"}, 422),
        ({"groups": "x"}, 422),
        ({"highlight": "9999"}, 400),
        ({"groups": "8", "highlight": "8"}, 400),
        ({"colormap": "{not json"}, 400),
        ({"colormap": '{"1": [1, 2, 999]}'}, 400),
    ],
)
def test_bad_style_parameters_are_4xx_with_a_reason(client, sample: Path, params, status) -> None:  # type: ignore[no-untyped-def]
    for r in (_tile(client, sample, ".png", **params), client.get("/cog/legend", params=params)):
        assert r.status_code == status, r.text
        assert r.json()["detail"]
