"""A patch's cluster should not depend on where the inference window fell (benchmarks/consistency.py).

Two ways the windows can fall elsewhere: another file of the same ground (a crop) — windows sit on a
lattice of the ground (a UTM grid), so the crop gets the same windows and only its edge (windows that
lose the context beyond it) differs; and the content moved against the windows (the copy georeferenced
13 patches away), where what helps is blending features across the windows that see a patch. The
floors sit just under what the served method reaches on the demo image (docs/consistency.md): crop
89.2 % at K = 512, 93.1 % in 16 groups; window shift 49.0 % / 73.6 %; window-line ratio ≤ 1.05 pooled
over placements (one window per patch: 43.2 % / 69.3 %, ratio 1.27). Issue 9 asks for ≥ 85 % / ≥ 95 %
and a ratio ≤ 1.05.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.consistency import agreement, crop, move, moved_by, on_its_grid, render_ids, window_line_ratio
from dinotiles.core.bundle import Bundle

pytestmark = pytest.mark.slow

SHIFT = 13  # half a window core: the worst place for a window line to move
CROP_FLOOR, CROP_GROUPED_FLOOR = 0.86, 0.90  # same ground patches of the scene and a crop of it
SHIFT_FLOOR, SHIFT_GROUPED_FLOOR = 0.47, 0.70  # the content moved 13 patches against the windows
RATIO_CEILING = 1.05  # colour step across window lines / elsewhere (issue 9's goal)


def test_clusters_barely_depend_on_window_placement(bundle: Bundle, sample: Path, tmp_path: Path) -> None:
    from benchmarks.common import engine

    groups = bundle.codebook.groups(16)
    sample = on_its_grid(sample, tmp_path / "on-its-grid.tif")  # RD New: moved by whole UTM patches below
    a, ga = render_ids(engine(bundle), sample)
    b, gb = render_ids(engine(bundle), crop(sample, tmp_path / "crop.tif", SHIFT))
    cropped, cropped_groups = agreement(a, ga, b, gb), agreement(a, ga, b, gb, labels=groups)
    moved = moved_by(sample, SHIFT)
    c, gc = render_ids(engine(bundle), move(sample, tmp_path / "moved.tif", SHIFT))
    shifted, shifted_groups = agreement(a, ga, c, gc, moved), agreement(a, ga, c, gc, moved, groups)
    figures = f"crop {cropped:.3f}/{cropped_groups:.3f}, shift {shifted:.3f}/{shifted_groups:.3f}"
    assert 0 < shifted < cropped < 1, figures  # real clusters; the lattice is what makes crops agree
    assert cropped >= CROP_FLOOR and cropped_groups >= CROP_GROUPED_FLOOR, figures
    assert shifted >= SHIFT_FLOOR and shifted_groups >= SHIFT_GROUPED_FLOOR, figures
    # window lines: pooled over four placements of the lines (on a 250 m image two or three lines decide
    # it, and where they fall moves one placement's ratio between 0.93 and 1.19)
    placements = [c] + [render_ids(engine(bundle), move(sample, tmp_path / f"m{k}.tif", k))[0] for k in (5, 9)]
    assert window_line_ratio(a, ga.core, bundle.codebook.colors, *placements) <= RATIO_CEILING
    # the comparison itself is right: a render against itself agrees fully, and a wrong pairing does not
    assert agreement(a, ga, a, ga) == 1.0
    assert agreement(a, ga, c, gc) < shifted / 2, figures
    # and blending is what does it: one window per patch agrees less and shows its window lines
    d, gd = render_ids(engine(bundle, blend=False), sample)
    e, ge = render_ids(engine(bundle, blend=False), tmp_path / "moved.tif")
    assert agreement(d, gd, e, ge, moved) < shifted
    assert window_line_ratio(d, gd.core, bundle.codebook.colors, e) > RATIO_CEILING
