"""Tile encodings: colours for maps (png/webp), cluster IDs for analysis (npy/tif)."""

from __future__ import annotations

import io
from enum import StrEnum

import numpy as np
import rasterio
from rasterio.transform import from_bounds
from rio_tiler.models import ImageData
from rio_tiler.utils import render

from dinotiles.core.bundle import Codebook
from dinotiles.core.colors import Style
from dinotiles.core.encoder import NODATA


class ClusterFormat(StrEnum):
    """png/webp: RGBA colours (alpha 0 = no data); npy/tif: uint16 IDs, 65535 = no data."""

    png = "png"
    webp = "webp"
    npy = "npy"
    tif = "tif"


MEDIA = {"png": "image/png", "webp": "image/webp", "npy": "application/x-binary", "tif": "image/tiff"}


def encode_tile(image: ImageData, fmt: ClusterFormat, codebook: Codebook, style: Style) -> bytes:
    """png/webp in the style's colours; npy/tif as IDs at the style's level (clusters or groups)."""
    ids = style.ids(np.asarray(image.array.data), codebook)
    if fmt in (ClusterFormat.png, ClusterFormat.webp):
        rgb, alpha = style.rgba(ids, codebook)
        return bytes(render(rgb, mask=alpha, img_format=fmt.value.upper()))
    if fmt == ClusterFormat.npy:
        buf = io.BytesIO()
        np.save(buf, ids[0])
        return buf.getvalue()
    height, width = ids.shape[1:]
    with rasterio.MemoryFile() as mem:
        with mem.open(
            driver="GTiff",
            width=width,
            height=height,
            count=1,
            dtype="uint16",
            nodata=NODATA,
            crs=image.crs,
            transform=from_bounds(*image.bounds, width, height),  # type: ignore[misc]
        ) as dst:
            dst.write(ids)
        return bytes(mem.read())
