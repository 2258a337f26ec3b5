"""dinotiles.server"""
