"""dinotiles.core"""
