"""The colour table: cluster IDs to RGBA, the one place IDs become colours (tiles, render)."""

from __future__ import annotations

import numpy as np

from dinotiles.core.encoder import NODATA


def colorize(ids: np.ndarray, colors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IDs [1, H, W] → RGB [3, H, W] and alpha [H, W] (0 where no data)."""
    valid = ids[0] != NODATA
    lut = np.zeros((NODATA + 1, 3), np.uint8)
    lut[: len(colors)] = colors
    return np.moveaxis(lut[ids[0]], -1, 0), np.where(valid, 255, 0).astype(np.uint8)
