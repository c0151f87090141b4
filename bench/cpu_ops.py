"""ONNX Runtime's CPU matmul kernels by row count: why int4 stops paying at batch > 2.

    .venv/bin/python bench/cpu_ops.py [--threads N] [--rows 1,2,4,16,64,128]

For SmolLM2-135M's gate_up [3072 x 576] and down [576 x 1536] shapes, times one node
of each kind on random weights, M rows of activations (M = batched decode rows or
prefill tokens):

    fp32        MatMul, float32 weights (the cpu target's default)
    nbits4      MatMulNBits 4-bit, block 32, zero points, accuracy_level 4 (`--quant int4`)
    nbits8      MatMulNBits 8-bit, block 32 (`--quant int8`)
    dq-int8     DynamicQuantizeMatMul: int8 weights with one scale per output channel,
                activations quantized to uint8 with one scale per call (not used: see
                bench/CPU_RESULTS.md, the down projection loses too much)

Prints microseconds per call (median) and each kernel's time relative to fp32 MatMul
at the same M (< 1: faster than fp32).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

SHAPES = {"gate_up": (3072, 576), "down": (576, 1536)}     # N x K


def session(node, inits, k: int, n: int, threads: int):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [node], "one_matmul", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "M", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "M", n])],
        [numpy_helper.from_array(a, name) for name, a in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                    helper.make_opsetid("com.microsoft", 1)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def kernels(n: int, k: int, threads: int, rng) -> dict:
    from onnx import helper

    nb = k // 32
    out = {"fp32": session(helper.make_node("MatMul", ["x", "W"], ["y"]),
                           {"W": rng.standard_normal((k, n), dtype=np.float32)}, k, n, threads)}
    for bits in (4, 8):
        zp_bytes = (nb + 1) // 2 if bits == 4 else nb
        inits = {"B": rng.integers(0, 256, (n, nb, 32 * bits // 8), dtype=np.uint8),
                 "scales": rng.random((n, nb), dtype=np.float32) * 0.01,
                 "zp": rng.integers(0, 256, (n, zp_bytes), dtype=np.uint8)}
        node = helper.make_node("MatMulNBits", ["x", "B", "scales", "zp"], ["y"],
                                domain="com.microsoft", K=k, N=n, bits=bits, block_size=32,
                                accuracy_level=4)
        out[f"nbits{bits}"] = session(node, inits, k, n, threads)
    inits = {"W": rng.integers(-127, 128, (k, n), dtype=np.int8),
             "scale": rng.random(n, dtype=np.float32) * 0.01, "zp": np.zeros(n, np.int8)}
    node = helper.make_node("DynamicQuantizeMatMul", ["x", "W", "scale", "zp"], ["y"],
                            domain="com.microsoft")
    out["dq-int8"] = session(node, inits, k, n, threads)
    return out


def time_us(sess, x, reps: int = 30) -> float:
    for _ in range(3):
        sess.run(None, {"x": x})
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        sess.run(None, {"x": x})
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def main() -> None:
    from rustinfer.runtime.cpu_cores import physical_cores

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="default: physical cores")
    ap.add_argument("--rows", default="1,2,4,16,64,128")
    args = ap.parse_args()
    threads = args.threads or physical_cores()
    rng = np.random.default_rng(0)
    print(f"one node per call, {threads} threads; us per call (x fp32 MatMul at the same M)")
    for shape, (n, k) in SHAPES.items():
        ks = kernels(n, k, threads, rng)
        print(f"\n{shape} [{n} x {k}]")
        print(f"{'M':>5} " + " ".join(f"{name:>18}" for name in ks))
        for m in map(int, args.rows.split(",")):
            x = rng.standard_normal((1, m, k), dtype=np.float32)
            us = {name: time_us(s, x) for name, s in ks.items()}
            print(f"{m:>5} " + " ".join(f"{v:>9.0f} (x{v / us['fp32']:5.2f})" for v in us.values()),
                  flush=True)


if __name__ == "__main__":
    main()
