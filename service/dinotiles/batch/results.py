"""What a batch run writes per source, and the STAC collection that describes all of it.

One folder per source: ``clusters.tif`` (RGBA, one pixel per 3.5 m patch, COG), ``cluster_ids.tif``
(uint16 IDs, 65535 = no data, overviews by mode), ``item.json`` (a STAC item linking back to its
source, the classification extension listing id → colour, the bundle and codebook fingerprints).
``collection.json`` at the root links every item. An item whose ``item.json`` carries the same
fingerprints is done: a rerun skips it. Where they are written: ``dinotiles.batch.outputs``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from dinotiles.batch.outputs import Output
from dinotiles.core.bundle import Bundle

STAC_VERSION = "1.0.0"
CLASSIFICATION = "https://stac-extensions.github.io/classification/v2.0.0/schema.json"
COG = "image/tiff; application=geotiff; profile=cloud-optimized"


@dataclass(frozen=True)
class SourceSpec:
    """One thing to render: an id (folder name), the raster's URL or path, where it came from."""

    id: str
    href: str  # the GeoTIFF (checked by the URL guard where it is opened)
    item: dict[str, Any] | None = None  # the source STAC item, when the input was a search
    item_url: str | None = None


def safe_id(text: str) -> str:
    """A folder name from an item id or file name: letters, digits, '-', '_', '.' only."""
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("._")
    return cleaned[:120] or "item"


def fingerprints(bundle: Bundle, engine_fingerprint: str) -> dict[str, Any]:
    return {
        "dinotiles:bundle": engine_fingerprint,
        "dinotiles:codebook": bundle.codebook.fingerprint,
        "dinotiles:k": bundle.codebook.k,
    }


def result_item(
    spec: SourceSpec,
    bounds_wgs84: tuple[float, float, float, float],
    bundle: Bundle,
    prints: dict[str, Any],
    source_key: str,
) -> dict[str, Any]:
    """The STAC item of one source's results (asset hrefs relative to the item).

    ``dinotiles:source`` is the source's identity as the server's cache knows it (URL and version):
    an on-the-fly request for the same source at the same version reads these IDs instead of
    encoding (``DINOTILES_RESULTS``).
    """
    w, s, e, n = bounds_wgs84
    when = (spec.item or {}).get("properties", {}).get("datetime") or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    colors = bundle.codebook.colors
    classes = [
        {"value": i, "name": f"cluster-{i}", "color_hint": "{:02X}{:02X}{:02X}".format(*map(int, c))}
        for i, c in enumerate(colors)
    ]
    source_link = spec.item_url or spec.href
    providers = (spec.item or {}).get("properties", {}).get("providers")
    link_type = "application/geo+json" if spec.item_url else COG
    return {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": [CLASSIFICATION],
        "id": spec.id,
        "geometry": {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]},
        "bbox": [w, s, e, n],
        "properties": {
            "datetime": when,
            "gsd": bundle.gsd * bundle.patch,
            "dinotiles:source": source_key,
            **prints,
            **({"providers": providers} if providers else {}),
        },
        "links": [{"rel": "derived_from", "href": source_link, "type": link_type}],
        "assets": {
            "clusters": {"href": "./clusters.tif", "type": COG, "roles": ["visual"], "title": "cluster colours (RGBA)"},
            "cluster_ids": {
                "href": "./cluster_ids.tif",
                "type": COG,
                "roles": ["data"],
                "title": "cluster IDs (uint16, 65535 = no data)",
                "classification:classes": classes,
            },
        },
    }


def write_collection(output: Output, collection_id: str, bundle: Bundle, prints: dict[str, Any]) -> dict[str, Any]:
    """collection.json over every published item (those of earlier runs too)."""
    items = output.items()
    boxes = np.array([item["bbox"] for _, item in items]) if items else np.zeros((0, 4))
    times = sorted(item["properties"]["datetime"] for _, item in items)
    bbox = [*boxes[:, :2].min(axis=0), *boxes[:, 2:].max(axis=0)] if len(boxes) else [-180, -90, 180, 90]
    collection = {
        "type": "Collection",
        "stac_version": STAC_VERSION,
        "stac_extensions": [CLASSIFICATION],
        "id": collection_id,
        "description": f"dinotiles cluster layers ({bundle.manifest.get('variant')}, K={bundle.codebook.k})",
        "license": "other",
        "extent": {
            "spatial": {"bbox": [[float(v) for v in bbox]]},
            "temporal": {"interval": [[times[0] if times else None, times[-1] if times else None]]},
        },
        "summaries": {k: [v] for k, v in prints.items()},
        "links": [{"rel": "item", "href": f"./{name}/item.json", "type": "application/geo+json"} for name, _ in items],
    }
    output.write_json("collection.json", collection)
    return collection
