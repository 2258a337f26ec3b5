"""dinotiles.scenes"""
