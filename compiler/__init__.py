"""rustinfer.compiler"""
