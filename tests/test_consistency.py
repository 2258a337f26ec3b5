"""A patch's cluster should not depend on where the inference window fell (benchmarks/consistency.py).

The floors sit just under what the served method (features blended across the windows that see a
patch) reaches on the demo image: measured 50.0 % at K = 512, 71.0 % in 16 groups, window-line ratio
0.89 (one window per patch: 46.2 %, 69.1 %, 1.18). A change that makes clusters depend more on
window placement fails here. Issue 9 asks for ≥ 85 % / ≥ 95 % (not reached: docs/consistency.md) and
a ratio ≤ 1.05 (reached).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.consistency import crop, render_ids, shift_agreement, window_line_ratio
from dinotiles.core.bundle import Bundle

pytestmark = pytest.mark.slow

SHIFT = 13  # half a window core: the worst place for a window line to move
AGREEMENT_FLOOR = 0.48  # share of ground patches with the same cluster after the shift (K = 512)
GROUPED_FLOOR = 0.69  # the same after grouping into 16 groups
RATIO_CEILING = 1.05  # colour step across window lines / elsewhere (issue 9's goal)


def test_clusters_barely_depend_on_window_placement(bundle: Bundle, sample: Path, tmp_path: Path) -> None:
    from benchmarks.common import engine

    a, core = render_ids(engine(bundle), sample)
    b, _ = render_ids(engine(bundle), crop(sample, tmp_path / "shifted.tif", SHIFT))
    agree = shift_agreement(a, b, SHIFT)
    grouped = shift_agreement(a, b, SHIFT, bundle.codebook.groups(16))
    assert 0 < agree < 1  # real clusters: neither trivially equal nor disjoint
    assert agree >= AGREEMENT_FLOOR, agree
    assert grouped >= GROUPED_FLOOR and grouped >= agree, grouped
    assert window_line_ratio(a, core, bundle.codebook.colors) <= RATIO_CEILING
    # the comparison itself is right: a render against itself agrees fully and has no shift error
    assert shift_agreement(a, a, 0) == 1.0
    # and blending is what does it: one window per patch agrees less and shows its window lines
    c, _ = render_ids(engine(bundle, blend=False), sample)
    d, _ = render_ids(engine(bundle, blend=False), tmp_path / "shifted.tif")
    assert shift_agreement(c, d, SHIFT) < agree
    assert window_line_ratio(c, core, bundle.codebook.colors) > RATIO_CEILING
