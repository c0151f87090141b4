"""fuse_rope_kv: RoPE of q and k + the KV-cache append -> one kernel; attention reads the cache.

Matches the two rotations feeding one attention, with the same positions and
the same rotary parameters, head counts agreeing with the attention's:

    qr = rope(q, pos, heads=h,   head_dim=d, theta=th, scaling=sc)
    kr = rope(k, pos, heads=kvh, head_dim=d, theta=th, scaling=sc)
    o  = attention(qr, kr, v, kc, vc, heads=h, kv_heads=kvh, head_dim=d, scale=s)

and both ropes rotate the same number of dims (`rotary_dim`, partial rotary).
The attention's `window` and `softcap`, and the ropes' `rotary_dim`, travel
to the fused ops when set (they are absent at their defaults).

Produces, at the attention (the last matched node, so the cache is written
exactly where it was before and q, k, v are all defined there):

    qr = rope_kv_write(q, k, v, pos, kc, vc)   rotates q and k, writes rotated k and v
                                               into the paged cache at step.slot_mapping
    o  = cached_attention(qr, kc, vc)          attention over the cache only

`cached_attention` consumes `qr`, the output of the write, so no scheduler can
move it before the write; the node list keeps them in execution order.

Pre: kr is used only by the attention (qr may have other users after it).
Post: no `attention` with rotated inputs remains; k_rot is never materialised.
Must run before: nothing required (after fuse_qkv, q, k and v are split views).
"""
from __future__ import annotations

from ..ir import Graph, Node
from ..pattern import Match, Pattern, private
from ..rewrite import Rewriter, rewrite_all

PATTERN = Pattern("""
    qr = rope(q, pos, heads=h, head_dim=d, theta=th, scaling=sc)
    kr = rope(k, pos, heads=kvh, head_dim=d, theta=th, scaling=sc)
    o = attention(qr, kr, v, kc, vc, heads=h, kv_heads=kvh, head_dim=d, scale=s)
""", where=[private("kr"), lambda m: _extras(m.nodes[0], ("rotary_dim",))
            == _extras(m.nodes[1], ("rotary_dim",))], anchor="last", name="fuse_rope_kv")


def _extras(node: Node, names: tuple) -> dict:
    """The optional attributes (OpDef.omit_default) a node carries."""
    return {k: node.attrs[k] for k in names if k in node.attrs}


def _rewrite(m: Match, rw: Rewriter) -> list[Node]:
    rope_attrs = {"heads": m["h"], "kv_heads": m["kvh"], "head_dim": m["d"],
                  "theta": m["th"], "scaling": m["sc"], **_extras(m.nodes[0], ("rotary_dim",))}
    attn_attrs = {"heads": m["h"], "kv_heads": m["kvh"], "head_dim": m["d"], "scale": m["s"],
                  **_extras(m.nodes[2], ("window", "softcap"))}
    caches = [m["kc"], m["vc"]]
    return [rw.node("rope_kv_write", [m["q"], m["k"], m["v"], m["pos"], *caches], [m["qr"]],
                    rope_attrs),
            rw.node("cached_attention", [m["qr"], *caches], [m["o"]], attn_attrs)]


def run(graph: Graph) -> tuple[Graph, int]:
    return rewrite_all(graph, PATTERN, _rewrite)
