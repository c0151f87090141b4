"""Lowering: the fused IR -> one ONNX model on ONNX Runtime's CPU contrib ops.

Activations are [batch, seq, features] (`B` rows of `S` new tokens each; the
executor groups a step's sequences into such runs). Graph interface:

    inputs   input_ids int64 [B, S], position_ids int64 [B, S] (only when a layer
             rotates outside GroupQueryAttention), seqlens_k int32 [B] (tokens in
             each row's cache after this run, minus 1), total_seq_len int32 [],
             logit_rows int64 [R] (indices into the B*S flattened tokens),
             <cache>/past float [B, kv_heads, max_seq, head_dim] per KV cache
    outputs  logits float [R, vocab], <cache>/present (bound to the same memory as
             <cache>/past: GroupQueryAttention then updates the cache in place)

Op by op (fused IR -> ONNX):

    embedding                     Gather(table, input_ids)
    rms_norm                      SimplifiedLayerNormalization (per head: Reshape around it)
    add_rms_norm                  com.microsoft.SkipSimplifiedLayerNormalization -> (out, sum)
    linear                        MatMul(x, W^T) | MatMulNBits (int4/int8) [+ Add(bias)]
    split -> rope_kv_write        GroupQueryAttention(packed qkv, do_rotary=1) when
      -> cached_attention         head_dim % 16 == 0 (ORT's rule for fused rotary);
                                  else Split -> RotaryEmbedding(q), RotaryEmbedding(k)
                                  -> GroupQueryAttention(q, k, v)
                                  (partial rotary: RotaryEmbedding rotary_embedding_dim)
                                  window w -> local_window_size w (the last w keys,
                                  measured against the reference); softcap -> GQA's
                                  softcap (after the scale)
    swiglu                        Split -> Sigmoid -> Mul -> Mul
    geglu / gelu                  Split -> Gelu(approximate) -> Mul / Gelu
    gather_rows                   Reshape [B*S, D] -> Gather(logit_rows)
    add / mul / silu              Add / Mul / Sigmoid -> Mul
    scale / softcap               Mul(factor) / Div(cap) -> Tanh -> Mul(cap)

Anything else (e.g. an unfused `attention`) raises UnsupportedOp naming the op.
Node names follow the IR: `/model/layers.3/attn/q+k+v/MatMul`.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from .ir import Graph, Node
from .onnx_weights import WeightStore

OPSET = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
MS = "com.microsoft"


class UnsupportedOp(NotImplementedError):
    """The graph holds an op (or a use of one) this lowering has no ONNX form for."""


def past_name(cache: str) -> str:
    return f"{cache}/past"


def present_name(cache: str) -> str:
    return f"{cache}/present"


class _Lowering:
    def __init__(self, graph: Graph, store: WeightStore):
        self.g, self.store = graph, store
        self.nodes: list[onnx.NodeProto] = []
        self.split_of: dict[str, tuple[Node, int]] = {}   # lazily split value -> (split node, index)
        self.emitted_splits: set[str] = set()
        self.rotated: dict[str, dict] = {}                 # rope_kv_write output -> pending GQA
        self.uses_positions = False
        self.rows_only: set[str] = set()   # IR values that are [R, D] (after gather_rows), not [B, S, D]
        # "logits" names the graph output; an IR value of that name that is not the output
        # (Gemma 2's logits before their soft-cap) is renamed inside the ONNX graph.
        out = graph.outputs[0]
        self.alias = {"logits": "logits/pre"} if out != "logits" and "logits" in graph.values else {}

    # -- helpers -------------------------------------------------------------------
    def emit(self, op, inputs, outputs, name, domain="", **attrs):
        outputs = [self.alias.get(o, o) for o in outputs]
        self.nodes.append(helper.make_node(op, inputs, outputs, name=f"/model/{name}/{op}",
                                           domain=domain, **attrs))
        return outputs[0] if len(outputs) == 1 else outputs

    def tmp(self, node_name: str, op: str, i: int = 0) -> str:
        return f"/model/{node_name}/{op}/output_{i}"

    def value(self, name: str) -> str:
        """The ONNX tensor holding IR value `name`, emitting a deferred Split if needed."""
        if name in self.rotated:
            raise UnsupportedOp(f"'{name}' (rotated q) is used by an op other than "
                                "cached_attention; the ONNX lowering fuses the two")
        if name in self.split_of and name not in self.emitted_splits:
            node, _ = self.split_of[name]
            sizes = self.store.int64(f"{node.name}/sizes", node.attrs["sizes"])
            self.emit("Split", [self.value(node.inputs[0]), sizes], list(node.outputs),
                      node.name, axis=-1)
            self.emitted_splits.update(node.outputs)
        name = self.alias.get(name, name)
        return {"tokens": "input_ids", "positions": "position_ids"}.get(name, name)

    # -- ops ------------------------------------------------------------------------
    def embedding(self, n: Node):
        table = self.store.float_table(n.inputs[1])
        self.emit("Gather", [table, "input_ids"], [n.outputs[0]], n.name, axis=0)

    def rms_norm(self, n: Node):
        w = self.store.norm(n.inputs[1], n.attrs.get("offset", 0.0))
        x, out, heads = self.value(n.inputs[0]), n.outputs[0], n.attrs.get("heads", 1)
        if heads != 1:        # per head (Qwen3's q/k norms): [B, S, H*D] as [B, S, H, D]
            split = self.store.int64(f"{n.name}/per_head", [0, 0, heads, -1])
            x = self.emit("Reshape", [x, split], [self.tmp(n.name, "Reshape", 0)], n.name)
            out = self.tmp(n.name, "SimplifiedLayerNormalization")
        self.emit("SimplifiedLayerNormalization", [x, w], [out], n.name, axis=-1,
                  epsilon=float(n.attrs["eps"]), stash_type=1)
        if heads != 1:
            merge = self.store.int64(f"{n.name}/merge_heads", [0, 0, -1])
            self.emit("Reshape", [out, merge], [n.outputs[0]], n.name + "/merge")

    def add_rms_norm(self, n: Node):
        w = self.store.norm(n.inputs[2], n.attrs.get("offset", 0.0))
        normed, total = n.outputs
        self.emit("SkipSimplifiedLayerNormalization",
                  [self.value(n.inputs[0]), self.value(n.inputs[1]), w],
                  [normed, "", "", total] if total else [normed], n.name, domain=MS,
                  epsilon=float(n.attrs["eps"]))

    def linear(self, n: Node):
        x, out = self.value(n.inputs[0]), n.outputs[0]
        bias = n.inputs[2] if len(n.inputs) > 2 and n.inputs[2] else None
        y = self.tmp(n.name, "MatMul") if bias else out
        self.store.linear(self, n, x, y)
        if bias:
            self.emit("Add", [y, self.store.float_table(bias)], [out], n.name)

    def split(self, n: Node):
        for i, name in enumerate(n.outputs):   # deferred: GQA may take the packed tensor whole
            if name:
                self.split_of[name] = (n, i)

    def rope_kv_write(self, n: Node):
        q, k, v, _pos, k_cache, v_cache = n.inputs
        a = n.attrs
        h, kvh, d = a["heads"], a["kv_heads"], a["head_dim"]
        if d % 8:
            raise UnsupportedOp(f"{n.name}: head_dim {d}; ONNX Runtime's CPU "
                                "GroupQueryAttention needs a multiple of 8")
        packed = self._packed_source(q, k, v, [h * d, kvh * d, kvh * d])
        # partial rotary (Phi-4-mini): tables for the first rotary_dim features of a head;
        # ORT rotates as many features as the tables are wide and passes the rest through
        rot = int(a.get("rotary_dim") or d)
        cos, sin = self.store.rope_tables(rot, a["theta"], a.get("scaling"))
        if packed is not None and d % 16 == 0 and rot == d:   # GQA's fused rotary: full only
            self.rotated[n.outputs[0]] = dict(qkv=[packed, "", ""], rotary=[cos, sin],
                                              caches=(k_cache, v_cache), do_rotary=1, attrs=a)
            return
        self.uses_positions = True
        partial = {} if rot == d else {"rotary_embedding_dim": rot}
        q_rot = self.emit("RotaryEmbedding", [self.value(q), "position_ids", cos, sin],
                          [self.tmp(n.name, "RotaryEmbedding", 0)], n.name + "/q", domain=MS,
                          interleaved=0, num_heads=h, **partial)
        k_rot = self.emit("RotaryEmbedding", [self.value(k), "position_ids", cos, sin],
                          [self.tmp(n.name, "RotaryEmbedding", 1)], n.name + "/k", domain=MS,
                          interleaved=0, num_heads=kvh, **partial)
        self.rotated[n.outputs[0]] = dict(qkv=[q_rot, k_rot, self.value(v)], rotary=[],
                                          caches=(k_cache, v_cache), do_rotary=0, attrs=a)

    def cached_attention(self, n: Node):
        q, k_cache, v_cache = n.inputs
        pending = self.rotated.pop(q, None)
        if pending is None or pending["caches"] != (k_cache, v_cache):
            raise UnsupportedOp(f"{n.name}: cached_attention must read the caches that the "
                                "rope_kv_write producing its q just wrote")
        a = n.attrs
        if (a["heads"], a["kv_heads"], a["head_dim"]) != tuple(
                pending["attrs"][x] for x in ("heads", "kv_heads", "head_dim")):
            raise UnsupportedOp(f"{n.name}: head counts differ from its rope_kv_write")
        extra = {} if a.get("scale") is None else {"scale": float(a["scale"])}
        if a.get("window"):
            extra["local_window_size"] = int(a["window"])
        if a.get("softcap"):
            extra["softcap"] = float(a["softcap"])
        inputs = pending["qkv"] + [past_name(k_cache), past_name(v_cache), "seqlens_k",
                                   "total_seq_len"] + pending["rotary"]
        self.emit("GroupQueryAttention", inputs,
                  [n.outputs[0], present_name(k_cache), present_name(v_cache)], n.name,
                  domain=MS, num_heads=a["heads"], kv_num_heads=a["kv_heads"],
                  do_rotary=pending["do_rotary"], rotary_interleaved=0, **extra)

    def swiglu(self, n: Node):
        half = self.g.values[n.inputs[0]].shape[-1] // 2
        sizes = self.store.int64(f"{n.name}/sizes", [half, half])
        gate, up = self.emit("Split", [self.value(n.inputs[0]), sizes],
                             [self.tmp(n.name, "Split", 0), self.tmp(n.name, "Split", 1)],
                             n.name, axis=-1)
        sig = self.emit("Sigmoid", [gate], [self.tmp(n.name, "Sigmoid")], n.name)
        act = self.emit("Mul", [gate, sig], [self.tmp(n.name, "Mul", 0)], n.name + "/silu")
        self.emit("Mul", [act, up], [n.outputs[0]], n.name)

    def geglu(self, n: Node):
        half = self.g.values[n.inputs[0]].shape[-1] // 2
        sizes = self.store.int64(f"{n.name}/sizes", [half, half])
        gate, up = self.emit("Split", [self.value(n.inputs[0]), sizes],
                             [self.tmp(n.name, "Split", 0), self.tmp(n.name, "Split", 1)],
                             n.name, axis=-1)
        act = self.emit("Gelu", [gate], [self.tmp(n.name, "Gelu")], n.name,
                        approximate=n.attrs.get("approximate", "none"))
        self.emit("Mul", [act, up], [n.outputs[0]], n.name)

    def gelu(self, n: Node):
        self.emit("Gelu", [self.value(n.inputs[0])], [n.outputs[0]], n.name,
                  approximate=n.attrs.get("approximate", "none"))

    def scale(self, n: Node):
        factor = self.store.add(f"{n.name}/factor", np.float32(n.attrs["factor"]))
        self.emit("Mul", [self.value(n.inputs[0]), factor], [n.outputs[0]], n.name)

    def softcap(self, n: Node):
        cap = self.store.add(f"{n.name}/cap", np.float32(n.attrs["cap"]))
        x = self.emit("Div", [self.value(n.inputs[0]), cap], [self.tmp(n.name, "Div")], n.name)
        t = self.emit("Tanh", [x], [self.tmp(n.name, "Tanh")], n.name)
        self.emit("Mul", [t, cap], [n.outputs[0]], n.name)

    def gather_rows(self, n: Node):
        width = self.g.values[n.inputs[0]].shape[-1]
        shape = self.store.int64(f"{n.name}/shape", [-1, width])
        flat = self.emit("Reshape", [self.value(n.inputs[0]), shape],
                         [self.tmp(n.name, "Reshape")], n.name)
        self.emit("Gather", [flat, "logit_rows"], [n.outputs[0]], n.name, axis=0)

    def add(self, n: Node):
        self.emit("Add", [self.value(i) for i in n.inputs], [n.outputs[0]], n.name)

    def mul(self, n: Node):
        self.emit("Mul", [self.value(i) for i in n.inputs], [n.outputs[0]], n.name)

    def silu(self, n: Node):
        x = self.value(n.inputs[0])
        sig = self.emit("Sigmoid", [x], [self.tmp(n.name, "Sigmoid")], n.name)
        self.emit("Mul", [x, sig], [n.outputs[0]], n.name)

    def _packed_source(self, q, k, v, sizes) -> str | None:
        """The packed [.., q|k|v] tensor when q, k, v are one split's outputs in that order."""
        parts = [self.split_of.get(x) for x in (q, k, v)]
        if any(p is None for p in parts) or len({id(p[0]) for p in parts}) != 1:
            return None
        node = parts[0][0]
        if [p[1] for p in parts] != [0, 1, 2] or list(node.attrs["sizes"]) != sizes:
            return None
        return self.value(node.inputs[0])


_SUPPORTED = ("embedding", "rms_norm", "add_rms_norm", "linear", "split", "rope_kv_write",
              "cached_attention", "swiglu", "geglu", "gelu", "gather_rows", "add", "mul", "silu",
              "scale", "softcap")
# Attributes each op's lowering honours. Ops may gain optional attributes (present
# only when not at their default: rotary_dim, window, softcap, ...); one this file
# does not know must not be dropped silently, so it is UnsupportedOp (-> fallback).
_ATTRS = {"rms_norm": {"eps", "offset", "heads"}, "add_rms_norm": {"eps", "offset"},
          "split": {"sizes"},
          "rope_kv_write": {"heads", "kv_heads", "head_dim", "theta", "scaling", "rotary_dim"},
          "cached_attention": {"heads", "kv_heads", "head_dim", "scale", "window", "softcap"},
          "geglu": {"approximate"}, "gelu": {"approximate"}, "scale": {"factor"},
          "softcap": {"cap"}}


def lower(graph: Graph, store: WeightStore) -> onnx.ModelProto:
    """The ONNX model of a fused graph; weights go through `store` (external data)."""
    if len(graph.outputs) != 1:
        raise UnsupportedOp(f"the ONNX lowering expects one output (logits), got {graph.outputs}")
    out = graph.outputs[0]
    producer = graph.producers().get(out)
    if producer is None or not any(n.op == "gather_rows" for n in graph.nodes):
        raise UnsupportedOp("the ONNX lowering needs the lm_head_last_token pass (gather_rows "
                            "before the LM head); it was disabled")
    low = _Lowering(graph, store)
    for node in graph.nodes:
        if node.op not in _SUPPORTED:
            raise UnsupportedOp(f"op '{node.op}' (node {node.name}) has no ONNX lowering "
                                f"(supported: {', '.join(_SUPPORTED)})")
        unknown = set(node.attrs) - _ATTRS.get(node.op, set())
        if unknown:
            raise UnsupportedOp(f"op '{node.op}' (node {node.name}) with attribute(s) "
                                f"{sorted(unknown)} has no ONNX lowering")
        getattr(low, node.op)(node)
        if node.op == "gather_rows" or any(i in low.rows_only for i in node.inputs):
            low.rows_only.update(o for o in node.outputs if o)
    if low.rotated:
        raise UnsupportedOp(f"rope_kv_write without cached_attention: {sorted(low.rotated)}")

    f32, i64, i32 = TensorProto.FLOAT, TensorProto.INT64, TensorProto.INT32
    inputs = [helper.make_tensor_value_info("input_ids", i64, ["batch", "seq"])]
    if low.uses_positions:
        inputs.append(helper.make_tensor_value_info("position_ids", i64, ["batch", "seq"]))
    inputs += [helper.make_tensor_value_info("seqlens_k", i32, ["batch"]),
               helper.make_tensor_value_info("total_seq_len", i32, []),
               helper.make_tensor_value_info("logit_rows", i64, ["rows"])]
    outputs = [helper.make_tensor_value_info("logits", f32, ["rows", graph.values[out].shape[-1]])]
    for cache in graph.caches():
        kvh, d = cache.shape[2], cache.shape[3]
        shape = ["batch", kvh, "max_seq", d]
        inputs.append(helper.make_tensor_value_info(past_name(cache.name), f32, shape))
        outputs.append(helper.make_tensor_value_info(present_name(cache.name), f32, shape))
    if out != "logits":
        low.nodes.append(helper.make_node("Identity", [out], ["logits"], name="/model/logits/Identity"))
    onnx_graph = helper.make_graph(low.nodes, f"rustinfer-{graph.family}", inputs, outputs,
                                   initializer=store.initializers)
    model = helper.make_model(onnx_graph, opset_imports=OPSET, producer_name="rustinfer")
    model.ir_version = 10
    return model


def describe(model: onnx.ModelProto) -> str:
    """One line per node: name, op, inputs -> outputs (the compile folder's graph dump)."""
    lines = []
    for node in model.graph.node:
        ins = ", ".join(i or "_" for i in node.input)
        outs = ", ".join(o or "_" for o in node.output)
        lines.append(f"{node.name:<56} {node.op_type:<34} ({ins}) -> {outs}")
    return "\n".join(lines) + "\n"

