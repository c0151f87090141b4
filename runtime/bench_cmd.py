"""`rustinfer bench`: how fast a model runs here, through the engine a server would use.

Like llama-bench, but through the whole engine (scheduler, sampler, detokenizer):

    prefill   one request of --prompt-tokens random tokens: prompt tokens / time to the
              first token (chunked by --max-num-batched-tokens like the server)
    decode    that request's next --new-tokens tokens: median step time -> tokens/s
    batch N   N such requests at once: generated tokens / decode time, all N together

Random token ids (the speed does not depend on the text); greedy; EOS ignored. The
numbers move with whatever else runs on the machine: compare runs made side by side
(bench/cpu.py and bench/gpu.py put peers in the same run).
"""
from __future__ import annotations

import statistics
import time

import torch


def _requests(llm, n: int, prompt_tokens: int, new_tokens: int, seed: int, sampling: dict):
    from .sampling import SamplingParams

    g = torch.Generator().manual_seed(seed)
    vocab = int(llm.graph.symbols["vocab"])
    params = SamplingParams(max_tokens=new_tokens, ignore_eos=True,
                            **{"temperature": 0.0, **sampling})
    for i in range(n):
        llm.engine.add_request(f"bench-{seed}-{i}", torch.randint(
            0, vocab, (prompt_tokens,), generator=g).tolist(), params)


def run_requests(llm, n: int, prompt_tokens: int, new_tokens: int, seed: int,
                 sampling: dict | None = None) -> dict:
    """Prefill time (until every request has its first token), then decode step times.
    sampling: SamplingParams fields other than greedy (temperature 0) to use."""
    eng = llm.engine
    _requests(llm, n, prompt_tokens, new_tokens, seed, sampling or {})
    started, prefill_s, steps, generated = time.perf_counter(), None, [], 0
    first: set[str] = set()
    while eng.has_unfinished():
        t0 = time.perf_counter()
        events = eng.step()
        dt = time.perf_counter() - t0
        if prefill_s is None:
            # until every request has its first token in hand (with overlapped decoding a
            # step's tokens arrive from the next step() call)
            first.update(e.request_id for e in events if e.new_token_ids)
            if len(first) == n:
                prefill_s = time.perf_counter() - started
            continue
        steps.append(dt)
        generated += sum(len(e.new_token_ids) for e in events)
    return dict(prefill_s=prefill_s or time.perf_counter() - started, steps=steps,
                generated=generated)


def bench(llm, prompt_tokens: int = 128, new_tokens: int = 64,
          batches: tuple[int, ...] = (4, 16)) -> list[str]:
    """The report's lines (also printed by the CLI as they come)."""
    lines = []
    # Warm-up at the measured length: a GPU target's first prefill of a new length loads or
    # compiles kernel specializations (milliseconds), which is start-up, not prefill speed.
    run_requests(llm, 1, prompt_tokens, 4, seed=0)
    one = run_requests(llm, 1, prompt_tokens, new_tokens, seed=1)
    step = statistics.median(one["steps"]) if one["steps"] else float("nan")
    lines.append(f"prefill  {prompt_tokens:>5} tokens  {prompt_tokens / one['prefill_s']:9.1f} "
                 f"tok/s  ({one['prefill_s'] * 1e3:.1f} ms to the first token)")
    lines.append(f"decode   1 request     {1 / step:9.1f} tok/s  (median step "
                 f"{step * 1e3:.2f} ms over {len(one['steps'])} steps)")
    for n in batches:
        if n > llm.engine.scheduler.max_num_seqs:
            lines.append(f"batch {n:>3}: skipped (more than --max-num-seqs "
                         f"{llm.engine.scheduler.max_num_seqs})")
            continue
        r = run_requests(llm, n, prompt_tokens, new_tokens, seed=n)
        tps = r["generated"] / sum(r["steps"]) if r["steps"] else float("nan")
        lines.append(f"batch {n:>3}  {n:>3} requests  {tps:9.1f} tok/s aggregate "
                     f"({tps * step:.1f}x one request)")
    return lines
