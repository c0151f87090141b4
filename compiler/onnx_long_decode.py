"""The decode graph for long contexts: model.onnx with its attention read once per KV head.

ONNX Runtime's CPU GroupQueryAttention streams a layer's K and V once per *query*
head (SmolLM2: 9 query heads on 3 KV heads, so 3x the cache bytes) and computes
the scores of every position through a strided GEMM per head.
NOTE measured (SmolLM2, 30 layers, one sequence, 1 thread, bench/cpu_long_context.py
records the whole-model numbers): at 160 / 1,000 / 4,000 positions GQA took 1.1-1.9 /
15-21 / 63-89 ms a step and the graph below 2.0-2.2 / 13-14 / 42-52 ms; the
one-key-window GQA that would only write the new k/v costs as much as the full one
(its GEMM spans every position whatever the window).

This graph serves decode runs (one new token per row) once the context is long:
each GroupQueryAttention becomes

    [Split packed q|k|v] -> RotaryEmbedding(q), RotaryEmbedding(k)   (GQA's fused rotary)
    ScatterND(past_k, kv_write_index, k) -> present_k                 (the new k in place:
    ScatterND(past_v, kv_write_index, v) -> present_v                  ORT skips ScatterND's
                                                                       copy when the output
                                                                       is bound to the input)
    q as [B, kv_heads, group, head_dim]
    FusedMatMul(q, present_k, transB, alpha=scale)   one GEMM of `group` rows per KV head
    [Div -> Tanh -> Mul: softcap] -> Add(mask) -> Softmax -> MatMul(present_v)
    -> [B, 1, heads * head_dim]

over the rows' whole capacity, the positions past each row's length masked by
`attn_mask` (0 or -inf, [B, 1, 1, capacity]; `attn_mask_window_<w>` for a
layer with a sliding window keeps what GQA's local_window_size w keeps: the last w
positions, the new token's included). Everything else is model.onnx's nodes, and
its initializers are the same entries of the same weights.bin.

New inputs: position_ids int64 [B, 1], kv_write_index_<kvh> int64 [B, 1, kvh, 3]
(row, head, position of the new token). seqlens_k and total_seq_len go.
"""
from __future__ import annotations

import onnx
from onnx import TensorProto, helper

MS = "com.microsoft"


def window_mask_name(window: int) -> str:
    return f"attn_mask_window_{window}"


def write_index_name(kv_heads: int) -> str:
    return f"kv_write_index_{kv_heads}"


def long_decode_model(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict]:
    """(the decode graph, what the executor must feed it: {"kv_heads": [...], "windows": [...]})."""
    out = onnx.ModelProto()
    out.CopyFrom(model)                  # initializers are external data: a cheap copy
    g = out.graph
    dims = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in g.input}
    consts: set[str] = set()
    kv_heads_seen: set[int] = set()
    windows: set[int] = set()

    def const(name, values, dtype=TensorProto.INT64, dims=None):
        """An initializer, added once however many layers use it."""
        if name not in consts:
            dims = [len(values)] if dims is None else dims
            g.initializer.append(helper.make_tensor(name, dtype, dims, values))
            consts.add(name)
        return name

    nodes = []
    for node in g.node:
        if node.op_type != "GroupQueryAttention":
            kept = onnx.NodeProto()
            kept.CopyFrom(node)          # the repeated field is cleared below
            nodes.append(kept)
            continue
        a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
        h, kvh = int(a["num_heads"]), int(a["kv_num_heads"])
        q, k, v, past_k, past_v = node.input[:5]
        d = dims[past_k][3]
        base = node.name.rsplit("/", 1)[0]           # /model/layers.3/attn/attention

        def emit(op, inputs, label, n_out=1, domain="", outputs=None, **attrs):
            outs = outputs or [f"{base}/{label}/{op}/output_{i}" for i in range(n_out)]
            nodes.append(helper.make_node(op, inputs, outs, name=f"{base}/{label}/{op}",
                                          domain=domain, **attrs))
            return outs[0] if n_out == 1 else outs

        if not k:                                     # packed q|k|v
            q, k, v = emit("Split", [q, const("long/qkv_sizes/%d_%d_%d" % (h, kvh, d),
                                                [h * d, kvh * d, kvh * d])], "qkv", n_out=3,
                           axis=-1)
        if a.get("do_rotary", 0):
            cos, sin = node.input[7], node.input[8]
            q = emit("RotaryEmbedding", [q, "position_ids", cos, sin], "q", domain=MS,
                     interleaved=int(a.get("rotary_interleaved", 0)), num_heads=h)
            k = emit("RotaryEmbedding", [k, "position_ids", cos, sin], "k", domain=MS,
                     interleaved=int(a.get("rotary_interleaved", 0)), num_heads=kvh)
        per_head = const(f"long/per_kv_head/{kvh}_{d}", [0, 0, kvh, d])
        index = write_index_name(kvh)
        kv_heads_seen.add(kvh)
        present_k, present_v = node.output[1], node.output[2]
        emit("ScatterND", [past_k, index, emit("Reshape", [k, per_head], "k")], "k",
             outputs=[present_k])
        emit("ScatterND", [past_v, index, emit("Reshape", [v, per_head], "v")], "v",
             outputs=[present_v])
        grouped = emit("Reshape", [q, const(f"long/grouped/{kvh}_{h}_{d}", [0, kvh, h // kvh, d])],
                       "q_per_kv_head")
        scale = float(a.get("scale", 0.0)) or d ** -0.5
        scores = emit("FusedMatMul", [grouped, present_k], "scores", domain=MS, transB=1,
                      alpha=scale)
        cap = float(a.get("softcap", 0.0))
        if cap > 0:
            cap_t = const(f"long/softcap/{cap}", [cap], TensorProto.FLOAT, dims=[])
            scores = emit("Mul", [emit("Tanh", [emit("Div", [scores, cap_t], "softcap")], "softcap"),
                                  cap_t], "softcap")
        window = int(a.get("local_window_size", -1))
        mask = "attn_mask"
        if window > 0:
            windows.add(window)
            mask = window_mask_name(window)
        probs = emit("Softmax", [emit("Add", [scores, mask], "mask")], "probs", axis=-1)
        context = emit("MatMul", [probs, present_v], "context")
        emit("Reshape", [context, const(f"long/merge/{h}_{d}", [0, 1, h * d])], "merge_heads",
             outputs=[node.output[0]])
    del g.node[:]
    g.node.extend(nodes)

    i64, f32 = TensorProto.INT64, TensorProto.FLOAT
    keep = [i for i in g.input if i.name not in ("seqlens_k", "total_seq_len")]
    del g.input[:]
    g.input.extend(keep)
    names = {i.name for i in g.input}
    if "position_ids" not in names:
        g.input.insert(1, helper.make_tensor_value_info("position_ids", i64, ["batch", 1]))
    for kvh in sorted(kv_heads_seen):
        g.input.append(helper.make_tensor_value_info(write_index_name(kvh), i64,
                                                     ["batch", 1, kvh, 3]))
    for name in ["attn_mask"] + [window_mask_name(w) for w in sorted(windows)]:
        g.input.append(helper.make_tensor_value_info(name, f32, ["batch", 1, 1, "max_seq"]))
    g.name = g.name + "-long-decode"
    return out, {"kv_heads": sorted(kv_heads_seen), "windows": sorted(windows)}
