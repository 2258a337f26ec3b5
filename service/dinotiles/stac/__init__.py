"""dinotiles.stac"""
