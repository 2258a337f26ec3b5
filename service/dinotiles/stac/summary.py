"""What an item's clusters and scene look like, from a sample of its windows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from dinotiles.core.encoder import NODATA
from dinotiles.core.engine import ClusterEngine, SourceView
from dinotiles.core.grid import BORDER, read_window
from dinotiles.core.reader import ClusterReader
from dinotiles.core.sources import Source
from dinotiles.stac.client import StacBadRequest
from dinotiles.stac.items import raster_asset

STATS_SAMPLE = 16  # windows sampled from a large item for /stac/statistics (seeded)
# windows per item for its scene vector: with 4, a random draw's vector strayed up to 0.66–1.13× as far
# from the item's all-window vector as the nearest other image lies; with 16, 0.19–0.28×
# (benchmarks/scene_vectors.py, docs/scene-clustering.md)
SCENE_WINDOWS = 16
SCENE_CANDIDATES = 2  # windows read per one encoded: reading is cheap, and no-data windows are skipped
MIN_VALID = 0.05  # share of a window core's patches that must hold image for the window to count


def sample_windows(view: SourceView, n: int, seed: int = 0) -> list[tuple[int, int]]:
    """All windows if few, else n chosen uniformly at random (seeded, so repeatable).

    Draws indices without listing every window: a scene's window count is bounded at open
    (DINOTILES_MAX_SCENE_PATCHES), but the list of them need never exist.
    """
    grid = view.grid
    cols, total = grid.window_cols, grid.window_rows * grid.window_cols
    if total <= n:
        return [(k // cols, k % cols) for k in range(total)]
    rng = np.random.default_rng(seed)
    picked: set[int] = set()
    while len(picked) < n:
        picked.update(int(k) for k in rng.integers(0, total, size=n - len(picked)))
    return [(k // cols, k % cols) for k in sorted(picked)]


def sampled_counts(engine: ClusterEngine, view: SourceView, n: int = STATS_SAMPLE) -> tuple[np.ndarray, int, int]:
    """Cluster counts over a sample of windows: (counts, windows sampled, windows in the item)."""
    windows = sample_windows(view, n)
    ids = engine.sample_ids(view, windows)  # one window a block: the request costs what it samples
    values = np.concatenate([a.ravel() for a in ids.values()])
    valid = values[values != NODATA]
    total = view.grid.window_rows * view.grid.window_cols
    return np.bincount(valid, minlength=engine.bundle.codebook.k), len(windows), total


def item_feature(engine: ClusterEngine, view: SourceView, feature: str, n: int = SCENE_WINDOWS) -> np.ndarray:
    """One vector per item: mean over sampled windows of the window's CLS / mean valid patch token.

    The q-th window is encoded turned by q quarter turns (mod 4): an aerial scene has no up, and a
    folder's scene vector is the mean over the four turns (``ROTATIONS``), so an item's is too, at no
    extra encoder work."""
    from dinotiles.scenes.cluster import ROTATIONS, rotated, scene_vector

    vectors = []
    drawn = sample_windows(view, SCENE_CANDIDATES * n)  # seeded: an item's vector is repeatable
    # in a seeded random order, not the draw's row order: the first n usable must not all be the top rows
    candidates = [drawn[k] for k in np.random.default_rng(0).permutation(len(drawn))]
    core = slice(BORDER, BORDER + view.grid.core)
    with engine.queue.reserve(n) as ticket:  # batched with tiles; bounded like them
        queued: list[tuple[np.ndarray, Any]] = []  # (patch validity, the encoder's future)
        for i, j in candidates:  # the first n with image in them: no-data windows do not thin the sample
            if len(queued) == n:
                break
            win = read_window(view.reader, view.plan, view.grid, i, j)
            if win.valid[core, core].mean() < MIN_VALID:  # the core is what a window stands for: image in it
                continue
            turns = len(queued) % ROTATIONS
            queued.append((rotated(win.valid, turns), ticket.submit(rotated(win.image, turns), kind="features")))
        ticket.done(n - len(queued))  # too few windows hold image: give the rest of the admission back
        for valid, future in queued:
            patches, cls = ticket.result(future)
            ticket.done()
            mean_patch = patches[core, core][valid[core, core]].mean(axis=0, keepdims=True)[:, None, None, :]
            vectors.append(scene_vector(mean_patch, cls[None], feature)[0])
    if not vectors:
        raise StacBadRequest("the item's image holds no valid pixels")
    return np.mean(vectors, axis=0)


def cluster_items(
    reader: type[ClusterReader],
    resolve: Callable[[str], Source],
    items: list[dict[str, Any]],
    assets: str,
    feature: str,
    progress: Callable[[int, int], None] | None = None,
    item_url: Callable[[dict[str, Any]], str] | None = None,
    vectorize: Callable[[list[str], str], list[np.ndarray]] | None = None,
    min_cluster_size: int | None = None,
) -> dict[str, Any]:
    """Scene-cluster STAC items; items without the asset are listed under `skipped`, never dropped silently.

    ``resolve`` is the server's URL guard (asset hrefs are client-controlled data); ``item_url``
    names where an item came from (relative hrefs resolve against it, and a remote item may not name
    local files); ``progress`` hears (items done, items in all) as each item is summarised;
    ``vectorize`` (hrefs, feature) → one vector each computes them elsewhere (``scenes cluster --ray``).
    """
    from dinotiles.scenes.cluster import cluster_scenes

    hrefs, names, skipped = [], [], []
    for item in items:
        try:
            _, href = raster_asset(item, [assets], item_url(item) if item_url else None)
        except StacBadRequest as exc:
            skipped.append({"id": str(item.get("id")), "reason": str(exc)})
            continue
        hrefs.append(href)
        names.append(str(item.get("id")))
    if vectorize is not None:  # elsewhere (a Ray cluster), all at once
        vectors = vectorize(hrefs, feature)
    else:
        vectors = []
        for n, href in enumerate(hrefs):
            with reader(resolve(href)) as src:
                vectors.append(item_feature(src.engine, src.view, feature))
            if progress is not None:
                progress(n + 1 + len(skipped), len(items))
    if len(vectors) < 3:
        raise StacBadRequest(f"need at least 3 items with a {assets!r} asset, found {len(vectors)}")
    out = cluster_scenes(np.stack(vectors), min_cluster_size=min_cluster_size).as_dict(names)
    out["feature"] = feature
    out["skipped"] = skipped
    return out
