"""rustinfer.server"""
