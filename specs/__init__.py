"""rustinfer.specs"""
