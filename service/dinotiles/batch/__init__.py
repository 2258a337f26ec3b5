"""Batch rendering of many sources on Ray, and the STAC collection of its results."""
