"""OGC documents: WMTS 1.0.0 capabilities (what QGIS and OWSLib read) and a small map page.

The capabilities are complete enough for desktop GIS: ServiceIdentification, ServiceProvider,
OperationsMetadata (RESTful GetCapabilities and GetTile), one layer with its WGS84 bounds, style,
format, TileMatrixSetLimits (the rows and columns that hold the image, zoom by zoom) and a
RESTful ResourceURL template without service/request/version, and the TileMatrixSet itself.
"""

from __future__ import annotations

import json
import re
from xml.sax.saxutils import escape, quoteattr

from morecantile import TileMatrixSet

OGC_EPSG = re.compile(r"^https?://www\.opengis\.net/def/crs/EPSG/0/(\d+)$")


def crs_urn(tms: TileMatrixSet) -> str:
    """The TMS CRS as an OGC URN (``urn:ogc:def:crs:EPSG::3857``), the form WMTS clients expect."""
    uri = str(getattr(tms.crs, "srs", tms.crs))
    match = OGC_EPSG.match(uri)
    return f"urn:ogc:def:crs:EPSG::{match[1]}" if match else uri


def matrix_limits(tms: TileMatrixSet, bounds: tuple[float, float, float, float], z: int) -> tuple[int, int, int, int]:
    """(min row, max row, min col, max col) of the tiles at ``z`` covering WGS84 ``bounds``."""
    west, south, east, north = bounds
    top_left = tms.tile(west, north, z)
    bottom_right = tms.tile(east, south, z)
    return top_left.y, bottom_right.y, top_left.x, bottom_right.x


def wmts_capabilities(
    *,
    title: str,
    tms: TileMatrixSet,
    bounds: tuple[float, float, float, float],
    minzoom: int,
    maxzoom: int,
    tile_template: str,
    capabilities_url: str,
    media_type: str,
    attribution: str,
) -> str:
    """WMTS 1.0.0 GetCapabilities for one layer, ``tile_template`` with {TileMatrix}/{TileCol}/{TileRow}."""
    west, south, east, north = bounds
    tile_base = tile_template.split("{TileMatrix}")[0]
    limits, matrices = [], []
    for z in range(minzoom, maxzoom + 1):
        m = tms.matrix(z)
        r0, r1, c0, c1 = matrix_limits(tms, bounds, z)
        limits.append(
            f"<TileMatrixLimits><TileMatrix>{m.id}</TileMatrix><MinTileRow>{r0}</MinTileRow>"
            f"<MaxTileRow>{r1}</MaxTileRow><MinTileCol>{c0}</MinTileCol><MaxTileCol>{c1}</MaxTileCol>"
            "</TileMatrixLimits>"
        )
        matrices.append(
            f"<TileMatrix><ows:Identifier>{m.id}</ows:Identifier>"
            f"<ScaleDenominator>{m.scaleDenominator}</ScaleDenominator>"
            f"<TopLeftCorner>{m.pointOfOrigin[0]} {m.pointOfOrigin[1]}</TopLeftCorner>"
            f"<TileWidth>{m.tileWidth}</TileWidth><TileHeight>{m.tileHeight}</TileHeight>"
            f"<MatrixWidth>{m.matrixWidth}</MatrixWidth><MatrixHeight>{m.matrixHeight}</MatrixHeight></TileMatrix>"
        )

    def operation(name: str, href: str) -> str:
        return (
            f'<ows:Operation name="{name}"><ows:DCP><ows:HTTP><ows:Get xlink:href={quoteattr(href)}>'
            '<ows:Constraint name="GetEncoding"><ows:AllowedValues><ows:Value>RESTful</ows:Value>'
            "</ows:AllowedValues></ows:Constraint></ows:Get></ows:HTTP></ows:DCP></ows:Operation>"
        )

    return f"""<?xml version="1.0" encoding="UTF-8"?>
<Capabilities xmlns="http://www.opengis.net/wmts/1.0" xmlns:ows="http://www.opengis.net/ows/1.1"
 xmlns:xlink="http://www.w3.org/1999/xlink" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
 xmlns:gml="http://www.opengis.net/gml"
 xsi:schemaLocation="http://www.opengis.net/wmts/1.0 http://schemas.opengis.net/wmts/1.0/wmtsGetCapabilities_response.xsd"
 version="1.0.0">
<ows:ServiceIdentification><ows:Title>dinotiles</ows:Title>
<ows:Abstract>DINOv2 cluster layers of aerial imagery</ows:Abstract>
<ows:ServiceType>OGC WMTS</ows:ServiceType><ows:ServiceTypeVersion>1.0.0</ows:ServiceTypeVersion>
<ows:Fees>none</ows:Fees><ows:AccessConstraints>none</ows:AccessConstraints></ows:ServiceIdentification>
<ows:ServiceProvider><ows:ProviderName>dinotiles</ows:ProviderName>
<ows:ProviderSite xlink:href={quoteattr(tile_base)}/>
<ows:ServiceContact><ows:IndividualName>dinotiles</ows:IndividualName></ows:ServiceContact></ows:ServiceProvider>
<ows:OperationsMetadata>{operation("GetCapabilities", capabilities_url)}{operation("GetTile", tile_base)}
</ows:OperationsMetadata>
<Contents>
<Layer><ows:Title>{escape(title)}</ows:Title><ows:Abstract>{escape(attribution)}</ows:Abstract>
<ows:WGS84BoundingBox crs="urn:ogc:def:crs:OGC:2:84"><ows:LowerCorner>{west} {south}</ows:LowerCorner>
<ows:UpperCorner>{east} {north}</ows:UpperCorner></ows:WGS84BoundingBox>
<ows:Identifier>clusters</ows:Identifier>
<Style isDefault="true"><ows:Identifier>default</ows:Identifier></Style>
<Format>{media_type}</Format>
<TileMatrixSetLink><TileMatrixSet>{tms.id}</TileMatrixSet>
<TileMatrixSetLimits>{"".join(limits)}</TileMatrixSetLimits></TileMatrixSetLink>
<ResourceURL format="{media_type}" resourceType="tile" template={quoteattr(tile_template)}/>
</Layer>
<TileMatrixSet><ows:Identifier>{tms.id}</ows:Identifier><ows:SupportedCRS>{escape(crs_urn(tms))}</ows:SupportedCRS>
{"".join(matrices)}
</TileMatrixSet>
</Contents>
<ServiceMetadataURL xlink:href={quoteattr(capabilities_url)}/>
</Capabilities>
"""


def map_page(tilejson_url: str, leaflet_js: str, leaflet_css: str) -> str:
    """A full-page Leaflet map of one TileJSON (files served by this server: works offline)."""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>dinotiles map</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="{escape(leaflet_css)}"><script src="{escape(leaflet_js)}"></script>
<style>html, body, #map {{ height: 100%; margin: 0 }}</style></head>
<body><div id="map"></div>
<script>
const map = L.map("map");
L.control.scale().addTo(map);
fetch({json.dumps(tilejson_url)}).then(r => r.json()).then(tj => {{
  if (!tj.tiles) {{ document.body.textContent = tj.detail || "no layer"; return; }}
  L.tileLayer(tj.tiles[0], {{minZoom: 0, maxNativeZoom: tj.maxzoom, maxZoom: tj.maxzoom + 3,
    attribution: tj.attribution || ""}}).addTo(map);
  map.fitBounds([[tj.bounds[1], tj.bounds[0]], [tj.bounds[3], tj.bounds[2]]]);
  map.setZoom(Math.max(map.getZoom(), tj.minzoom));
}});
</script></body></html>
"""
