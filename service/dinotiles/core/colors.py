"""The colour table: cluster IDs to RGBA, the one place IDs become colours (tiles, render, legend).

A ``Style`` is what a request asks of the picture: ``groups`` (speak of N super-clusters, each in a
categorical colour), ``colormap`` (the user's own ``{id: [r, g, b, a]}``, the TiTiler way) and
``highlight`` (these IDs in full colour, every other one dimmed). IDs are mapped first (clusters →
groups), then coloured, so npy/tif tiles, point and statistics speak of the same IDs the PNG shows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from dinotiles.core.encoder import NODATA
from dinotiles.core.errors import BadInput

if TYPE_CHECKING:
    from dinotiles.core.bundle import Codebook

DIM_RGB, DIM_MIX, DIM_ALPHA = 200, 0.75, 96  # dimmed = 75 % towards light grey, mostly transparent
MAX_COLORMAP_ENTRIES = 65535


class StyleError(BadInput, ValueError):
    """A groups/colormap/highlight value the server cannot use (HTTP 400)."""


def colorize(ids: np.ndarray, colors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IDs [1, H, W] → RGB [3, H, W] and alpha [H, W] (0 where no data)."""
    valid = ids[0] != NODATA
    lut = np.zeros((NODATA + 1, 3), np.uint8)
    lut[: len(colors)] = colors
    return np.moveaxis(lut[ids[0]], -1, 0), np.where(valid, 255, 0).astype(np.uint8)


def parse_colormap(text: str | None) -> dict[int, tuple[int, int, int, int]] | None:
    """``{"3": [255, 0, 0], "17": [0, 0, 255, 128]}`` → {3: (255, 0, 0, 255), 17: (0, 0, 255, 128)}."""
    if text is None:
        return None
    try:
        raw = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise StyleError(f"colormap is not JSON: {exc}") from None
    if not isinstance(raw, dict) or not raw or len(raw) > MAX_COLORMAP_ENTRIES:
        raise StyleError('colormap must be a JSON object {"id": [r, g, b] or [r, g, b, a]} with 1..65535 entries')
    out = {}
    for key, value in raw.items():
        if not str(key).isdigit() or int(key) >= NODATA:
            raise StyleError(f"colormap key {key!r} is not a cluster or group id (0..65534)")
        ok = isinstance(value, list) and len(value) in (3, 4)
        if not ok or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value):
            raise StyleError(f"colormap value for {key} must be [r, g, b] or [r, g, b, a] with integers 0..255")
        out[int(key)] = (value[0], value[1], value[2], value[3] if len(value) == 4 else 255)
    return out


def parse_highlight(text: str | None) -> tuple[int, ...]:
    if not text:
        return ()
    parts = text.split(",")
    if len(parts) > 256 or not all(p.strip().isdigit() for p in parts):
        raise StyleError("highlight must be up to 256 comma-separated cluster or group ids")
    return tuple(sorted({int(p) for p in parts}))


@dataclass(frozen=True)
class Style:
    """How a request wants IDs named and coloured; the default is the codebook's own clusters and colours."""

    groups: int | None = None
    colormap: dict[int, tuple[int, int, int, int]] | None = field(default=None, hash=False)
    highlight: tuple[int, ...] = ()

    def check(self, codebook: Codebook) -> Style:
        """Refuse IDs that do not exist at this level (400), so a typo is not a silently grey map."""
        top = self.groups if self.groups is not None else codebook.k
        if self.groups is not None:
            codebook.groups(self.groups)  # validates the range
        bad = [i for i in self.highlight if i >= top]
        if bad:
            raise StyleError(f"highlight ids {bad} do not exist: ids are 0..{top - 1} at this level")
        return self

    @property
    def key(self) -> str:
        """What the picture depends on, for ETags and caches."""
        cmap = json.dumps(sorted(self.colormap.items())) if self.colormap else ""
        return f"g{self.groups or 0}|h{','.join(map(str, self.highlight))}|c{cmap}"

    def ids(self, ids: np.ndarray, codebook: Codebook) -> np.ndarray:
        """Cluster IDs → the IDs at the requested level (groups), no data kept."""
        if self.groups is None:
            return ids
        lut = np.full(NODATA + 1, NODATA, np.uint16)
        lut[: codebook.k] = codebook.groups(self.groups)
        return lut[ids]

    def colors(self, codebook: Codebook) -> np.ndarray:
        """RGBA [n, 4] for the IDs at this level (before colormap and highlight)."""
        from dinotiles.core.groups import palette

        if self.groups is not None:
            n = int(codebook.groups(self.groups).max()) + 1
            rgb = palette()[:n]
        else:
            rgb = codebook.colors
        return np.concatenate([rgb, np.full((len(rgb), 1), 255, np.uint8)], axis=1)

    def lut(self, codebook: Codebook) -> np.ndarray:
        """The full RGBA lookup table [65536, 4] for mapped IDs: colours, then colormap, then highlight."""
        table = np.zeros((NODATA + 1, 4), np.uint8)
        base = self.colors(codebook)
        table[: len(base)] = base
        if self.colormap:
            user = np.zeros_like(table)
            for i, rgba in self.colormap.items():
                user[i] = rgba
            table = user  # the TiTiler way: IDs the map does not name are transparent
        if self.highlight:
            keep = np.zeros(len(table), bool)
            keep[list(self.highlight)] = True
            dim = table[~keep]
            dim[:, :3] = (dim[:, :3] * (1 - DIM_MIX) + DIM_RGB * DIM_MIX).astype(np.uint8)
            dim[:, 3] = np.minimum(dim[:, 3], DIM_ALPHA)
            table[~keep] = dim
        table[NODATA] = 0
        return table

    def rgba(self, ids: np.ndarray, codebook: Codebook) -> tuple[np.ndarray, np.ndarray]:
        """Mapped IDs [1, H, W] → RGB [3, H, W] and alpha [H, W]."""
        px = self.lut(codebook)[ids[0]]
        return np.moveaxis(px[..., :3], -1, 0), px[..., 3]
