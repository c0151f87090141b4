"""rustinfer.kernels"""
