"""GPU benchmark: the cuda target against plain torch eager, Llama 3.x shapes, random bf16 weights.

    python bench/gpu.py [--models 1b,3b,8b] [--out DIR] [--steps 256]

For each config in bench/models/ (Llama-3.2-1B, 3B, Llama-3.1-8B), in one run:
- decode TPOT at bs=1, context 512: median step time over --steps steps, each an
  engine-style step (StepInputs built on the host, inputs copied in, graph replay,
  argmax read back); the same overlapped as the engine runs it (the next step launched
  from the argmax still on the GPU before the token is read back); plus the graph replay
  alone (CUDA events, back to back);
- prefill TTFT for one prompt of 128 / 1024 / 4096 tokens (eager plan);
- decode step time and throughput at batch 8 / 32 / 128, context 512;
- the peer: the same model as a straightforward Hugging Face style implementation
  in torch eager (separate q/k/v/gate/up GEMMs, rotate_half RoPE, a static
  [B, kv_heads, S, D] cache, repeat_kv + SDPA), on the same weight bytes;
- the HBM roofline: bytes one decode step must read (weights + KV) / the
  bandwidth of a measured device-to-device copy.
The KV contents do not change timings, so decode runs over a zero-filled cache
of the right length; one real prefill per model checks our logits against the peer's.
Writes gpu.json and gpu.md (a table) into --out.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
MODELS = {"1b": "llama-3.2-1b-instruct", "3b": "llama-3.2-3b-instruct",
          "8b": "llama-3.1-8b-instruct"}
CTX, BLOCK = 512, 16


class RandomCheckpoint:
    """Hugging Face names and shapes from a config; random bf16 tensors made on the GPU."""

    def __init__(self, config: dict, seed: int = 0, device: str = "cuda"):
        c, self.device = config, device
        h, inter, d = c["hidden_size"], c["intermediate_size"], c.get("head_dim") or \
            c["hidden_size"] // c["num_attention_heads"]
        q, kv = c["num_attention_heads"] * d, c["num_key_value_heads"] * d
        self.config, self.seed, self._shapes = config, seed, {"model.embed_tokens.weight":
                                                              (c["vocab_size"], h)}
        for i in range(c["num_hidden_layers"]):
            p = f"model.layers.{i}."
            self._shapes.update({
                p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
                p + "self_attn.q_proj.weight": (q, h), p + "self_attn.k_proj.weight": (kv, h),
                p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, q),
                p + "mlp.gate_proj.weight": (inter, h), p + "mlp.up_proj.weight": (inter, h),
                p + "mlp.down_proj.weight": (h, inter)})
        self._shapes["model.norm.weight"] = (h,)
        if not c.get("tie_word_embeddings", False):
            self._shapes["lm_head.weight"] = (c["vocab_size"], h)

    def names(self):
        return list(self._shapes)

    def shape(self, name):
        return self._shapes[name]

    def dtype(self, name):
        return "bfloat16"

    def load(self, name):
        g = torch.Generator(self.device).manual_seed(self.seed + self.names().index(name))
        t = torch.randn(self._shapes[name], generator=g, device=self.device, dtype=torch.bfloat16)
        return t.mul_(0.1).add_(1.0) if name.endswith("norm.weight") else t.mul_(0.02)


# --- the peer: plain torch eager, Hugging Face style ---------------------------------

class EagerLlama:
    """modeling_llama's math, op by op (sdpa attention, static cache), bf16."""

    def __init__(self, ex, config: dict, max_batch: int, max_len: int):
        c, W, dev = config, ex.weights, ex.device
        self.h_heads, self.kvh = c["num_attention_heads"], c["num_key_value_heads"]
        self.d = c.get("head_dim") or c["hidden_size"] // self.h_heads
        self.eps, self.inter = c["rms_norm_eps"], c["intermediate_size"]
        q, kv = self.h_heads * self.d, self.kvh * self.d
        self.embed, self.norm = W["model.embed_tokens.weight"], W["model.norm.weight"]
        self.lm_head = W.get("lm_head.weight", self.embed)
        self.layers = []
        for i in range(c["num_hidden_layers"]):
            p = f"model.layers.{i}."
            qkv, gu = W[p + "self_attn.q+k+v_proj.weight"], W[p + "mlp.gate+up_proj.weight"]
            self.layers.append(dict(        # views of the same bytes: separate GEMMs, as HF
                ln1=W[p + "input_layernorm.weight"], ln2=W[p + "post_attention_layernorm.weight"],
                q=qkv[:q], k=qkv[q:q + kv], v=qkv[q + kv:], o=W[p + "self_attn.o_proj.weight"],
                gate=gu[:self.inter], up=gu[self.inter:], down=W[p + "mlp.down_proj.weight"]))
        # One flat K and V buffer per layer, viewed as [B, kv_heads, L, D] per call: decode
        # batches use L = max_len, a single longer prompt a longer L over the same bytes.
        self.max_len, numel = max_len, max_batch * self.kvh * max_len * self.d
        self.cache = [(torch.zeros(numel, dtype=torch.bfloat16, device=dev),
                       torch.zeros(numel, dtype=torch.bfloat16, device=dev))
                      for _ in self.layers]
        from rustinfer.kernels.rope_tables import inv_freq
        positions = max(max_len, 4096 + 16)
        freqs = torch.arange(positions, dtype=torch.float32)[:, None] * \
            inv_freq(self.d, c.get("rope_theta", 10000.0), c.get("rope_scaling"))[None, :]
        emb = torch.cat((freqs, freqs), dim=-1).to(dev)
        self.cos, self.sin = emb.cos().bfloat16(), emb.sin().bfloat16()

    def _rms(self, x, w):
        var = x.float().pow(2).mean(-1, keepdim=True)
        return w * (x.float() * torch.rsqrt(var + self.eps)).to(x.dtype)

    @staticmethod
    def _rot(x):
        half = x.shape[-1] // 2
        return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

    @torch.inference_mode()
    def forward(self, ids, start: int):
        """ids [B, S] at positions start..start+S-1 of every sequence -> last logits [B, V]."""
        b, s = ids.shape
        x = F.embedding(ids, self.embed)
        cos, sin = self.cos[start:start + s][None, None], self.sin[start:start + s][None, None]
        group = self.h_heads // self.kvh
        length = max(self.max_len, start + s)
        for layer, (kflat, vflat) in zip(self.layers, self.cache):
            kc = kflat[:b * self.kvh * length * self.d].view(b, self.kvh, length, self.d)
            vc = vflat[:b * self.kvh * length * self.d].view(b, self.kvh, length, self.d)
            y = self._rms(x, layer["ln1"])
            q = F.linear(y, layer["q"]).view(b, s, self.h_heads, self.d).transpose(1, 2)
            k = F.linear(y, layer["k"]).view(b, s, self.kvh, self.d).transpose(1, 2)
            v = F.linear(y, layer["v"]).view(b, s, self.kvh, self.d).transpose(1, 2)
            q, k = q * cos + self._rot(q) * sin, k * cos + self._rot(k) * sin
            kc[:b, :, start:start + s], vc[:b, :, start:start + s] = k, v
            keys = kc[:b, :, :start + s].repeat_interleave(group, dim=1)      # repeat_kv
            vals = vc[:b, :, :start + s].repeat_interleave(group, dim=1)
            mask = None
            if s > 1:
                mask = torch.ones(s, start + s, dtype=torch.bool, device=x.device).tril(start)
            a = F.scaled_dot_product_attention(q, keys, vals, attn_mask=mask)
            x = x + F.linear(a.transpose(1, 2).reshape(b, s, -1), layer["o"])
            y = self._rms(x, layer["ln2"])
            x = x + F.linear(F.silu(F.linear(y, layer["gate"])) * F.linear(y, layer["up"]),
                             layer["down"])
        return F.linear(self._rms(x[:, -1], self.norm), self.lm_head)


# --- measurements ----------------------------------------------------------------------

def sync_time(fn, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return out


def replay_ms(graph, reps: int = 64) -> float:
    """Milliseconds per replay of a captured CUDA graph, `reps` back to back (GPU time only:
    the inputs stay as they are)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def overlapped_tpot_ms(ex, table: list[int], steps: int) -> float:
    """bs=1 steps as the engine's overlapped decoding runs them: step i + 1 is launched from
    step i's argmax still on the GPU (the executor copies it into the graph's inputs), and
    only then is step i's token read back, through pinned memory. The host's layout and
    read-back overlap the GPU's work; the median wall time per step is the TPOT a client sees."""
    from rustinfer.compiler.step_inputs import StepInputs
    from rustinfer.runtime.sampling import greedy_argmax

    host = [torch.empty(1, dtype=torch.long, pin_memory=True) for _ in range(2)]
    ready = [torch.cuda.Event(), torch.cuda.Event()]
    tokens, times = None, []
    for i in range(steps):
        t0 = time.perf_counter()
        step = StepInputs.for_sequences([([1], CTX + i, table)], BLOCK)
        if tokens is not None:
            step.token_ids = tokens
        tokens = greedy_argmax(ex.forward_device(step))
        k = i % 2
        host[k].copy_(tokens, non_blocking=True)
        ready[k].record()
        if i:
            ready[1 - k].synchronize()          # step i - 1's token, not step i's
            host[1 - k].tolist()
        times.append(time.perf_counter() - t0)
    torch.cuda.synchronize()
    return 1e3 * statistics.median(times[3:])


def hbm_bandwidth(nbytes: int = 2 << 30) -> float:
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = min(sync_time(lambda: dst.copy_(src), 10))
    del src, dst
    return 2 * nbytes / best                     # bytes read + written per second


def bench_model(key: str, steps: int, bandwidth: float) -> dict:
    from rustinfer.compiler.build import CompileOptions, compile_model
    from rustinfer.compiler.spec import SPECS_DIR
    from rustinfer.compiler.step_inputs import StepInputs
    from rustinfer.runtime.cuda_executor import CudaExecutor
    from rustinfer.runtime.sampling import greedy_argmax

    config = json.loads((REPO / "bench" / "models" / MODELS[key] / "config.json").read_text())
    ckpt = RandomCheckpoint(config)
    max_len, max_batch = 4096 + steps + 16, 128
    seq_blocks = -(-(CTX + steps + 16) // BLOCK)
    num_blocks = max(max_batch * seq_blocks, -(-max_len // BLOCK)) + 8
    t0 = time.perf_counter()
    folder, _ = compile_model(SPECS_DIR / "llama3.yaml", config, ckpt,
                              CompileOptions(target="cuda", max_tokens=4096))
    ex = CudaExecutor(folder / "plan.py", ckpt, num_blocks=num_blocks, block_size=BLOCK,
                      max_model_len=max_len, max_batch=max_batch)
    r = {"model": MODELS[key], "load_capture_s": time.perf_counter() - t0}
    peer = EagerLlama(ex, config, max_batch, CTX + steps + 16)
    vocab = config["vocab_size"]
    weight_bytes = sum(w.numel() * w.element_size() for w in ex.weights.values())
    if not config.get("tie_word_embeddings", False):    # decode reads one embedding row
        weight_bytes -= ex.weights["model.embed_tokens.weight"].numel() * 2
    kv_token = sum(c[0, 0].numel() * c.element_size() for c in ex.caches.values())
    r.update(weight_gb=weight_bytes / 1e9, kv_bytes_per_token=kv_token)
    ids = lambda *shape: torch.randint(0, vocab, shape)                     # noqa: E731

    # correctness: one 128-token prefill, our logits vs the peer's
    prompt = ids(128)
    ours = ex.forward(StepInputs.for_sequences([(prompt.tolist(), 0, list(range(8)))], BLOCK))
    theirs = peer.forward(prompt[None].cuda(), 0).float().cpu()
    r["prefill_logits_max_abs_diff"] = (ours - theirs).abs().max().item()
    r["prefill_logits_scale"] = theirs.abs().max().item()

    # prefill TTFT (eager plan; first call per length compiles / warms up)
    for n in (128, 1024, 4096):
        table = list(range(-(-n // BLOCK)))
        step = lambda: ex.forward(StepInputs.for_sequences(  # noqa: E731
            [(ids(n).tolist(), 0, table)], BLOCK))
        step()
        r[f"ttft_{n}_ms"] = 1e3 * statistics.median(sync_time(step, 5))
        p_ids = ids(1, n).cuda()
        peer.forward(p_ids, 0)
        r[f"peer_ttft_{n}_ms"] = 1e3 * statistics.median(
            sync_time(lambda: peer.forward(p_ids, 0), 5))

    # decode at context CTX, bs = 1, 8, 32, 128
    for b in (1, 8, 32, 128):
        tables = [list(range(i * seq_blocks, (i + 1) * seq_blocks)) for i in range(b)]
        tok = [1] * b
        times = []
        for i in range(steps if b == 1 else 32):
            t0 = time.perf_counter()            # the engine's layout + ours + reading tokens
            step = StepInputs.for_sequences([([tok[j]], CTX + i, tables[j]) for j in range(b)],
                                            BLOCK)
            tok = greedy_argmax(ex.forward_device(step)).tolist()
            times.append(time.perf_counter() - t0)
        r[f"decode_bs{b}_ms"] = 1e3 * statistics.median(times[3:])
        if b == 1:
            r["decode_bs1_overlap_ms"] = overlapped_tpot_ms(ex, tables[0], steps)
        r[f"decode_bs{b}_tok_s"] = b / (r[f"decode_bs{b}_ms"] / 1e3)
        r[f"replay_bs{b}_ms"] = replay_ms(ex.graphs[ex.bucket_for(step)])
        nxt = torch.ones(b, 1, dtype=torch.long, device="cuda")
        peer_step = lambda: peer.forward(nxt, CTX).argmax(-1).tolist()    # noqa: E731
        peer_step()
        r[f"peer_decode_bs{b}_ms"] = 1e3 * statistics.median(
            sync_time(peer_step, 64 if b == 1 else 16))
        need = weight_bytes + b * CTX * kv_token
        r[f"roofline_bs{b}_ms"] = 1e3 * need / bandwidth
    r["bs32_over_bs1"] = r["decode_bs32_ms"] / r["decode_bs1_ms"]
    # The same on the GPU alone: the engine-style steps add host work that grows with the
    # batch (laying out 32 sequences), and hosts differ from card to card.
    r["replay_bs32_over_bs1"] = r["replay_bs32_ms"] / r["replay_bs1_ms"]
    del ex, peer
    torch.cuda.empty_cache()
    return r


def table(results: list[dict], device: str, bandwidth: float) -> str:
    rows = [f"Device: {device}; measured copy bandwidth {bandwidth / 1e12:.2f} TB/s "
            f"(read + write); {time.strftime('%Y-%m-%d')}", "",
            "| model | TPOT bs=1 ms (replay) | overlapped TPOT ms | peer ms | roofline ms | "
            "% roofline (overlapped) | TTFT 128/1024/4096 ms | peer TTFT ms | "
            "bs=8/32/128 tok/s | peer tok/s | bs32/bs1 (replay) |", "|" + "---|" * 11]
    for r in results:
        if "error" in r:
            rows.append(f"| {r['model']} | error: {r['error']} |" + " |" * 9)
            continue
        g = lambda k: r.get(k, float("nan"))                               # noqa: E731
        rows.append(
            f"| {r['model']} | {g('decode_bs1_ms'):.3f} ({g('replay_bs1_ms'):.3f}) | "
            f"{g('decode_bs1_overlap_ms'):.3f} | "
            f"{g('peer_decode_bs1_ms'):.2f} | {g('roofline_bs1_ms'):.3f} | "
            f"{100 * g('roofline_bs1_ms') / g('decode_bs1_ms'):.0f}% "
            f"({100 * g('roofline_bs1_ms') / g('decode_bs1_overlap_ms'):.0f}%) | "
            + "/".join(f"{g(f'ttft_{n}_ms'):.1f}" for n in (128, 1024, 4096)) + " | "
            + "/".join(f"{g(f'peer_ttft_{n}_ms'):.1f}" for n in (128, 1024, 4096)) + " | "
            + "/".join(f"{g(f'decode_bs{b}_tok_s'):.0f}" for b in (8, 32, 128)) + " | "
            + "/".join(f"{b / g(f'peer_decode_bs{b}_ms') * 1e3:.0f}" for b in (8, 32, 128))
            + f" | {g('bs32_over_bs1'):.2f} ({g('replay_bs32_over_bs1'):.2f}) |")
    rows += ["", "Ratios (peer / ours, higher is better): " + "; ".join(
        f"{r['model']}: TPOT {r['peer_decode_bs1_ms'] / r['decode_bs1_ms']:.1f}x, "
        f"TTFT-1024 {r.get('peer_ttft_1024_ms', float('nan')) / r['ttft_1024_ms']:.1f}x"
        for r in results if "error" not in r)]
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="1b,3b,8b")
    p.add_argument("--steps", type=int, default=256)
    p.add_argument("--out", default=".")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench/gpu.py: no CUDA device", file=sys.stderr)
        return 2
    device = torch.cuda.get_device_name()
    bandwidth = hbm_bandwidth()
    print(f"{device}: copy bandwidth {bandwidth / 1e12:.2f} TB/s", flush=True)
    results = []
    for key in args.models.split(","):
        started = time.perf_counter()
        try:
            r = bench_model(key, args.steps, bandwidth)
        except Exception as err:                       # keep going: report what ran
            traceback.print_exc()
            r = {"model": MODELS[key], "error": f"{type(err).__name__}: {err}"[:200]}
            torch.cuda.empty_cache()
        r["wall_s"] = time.perf_counter() - started
        print(json.dumps(r), flush=True)
        results.append(r)
        out = Path(args.out)                           # after each model: a timeout keeps some
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu.json").write_text(json.dumps({"device": device, "bandwidth": bandwidth,
                                                  "results": results}, indent=1))
        text = table(results, device, bandwidth)
        (out / "gpu.md").write_text(text + "\n")
    print(text)
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
