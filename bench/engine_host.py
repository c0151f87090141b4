"""The engine's own host time per decode step: everything a step does besides the forward.

    .venv/bin/python bench/engine_host.py [--batches 1,8,32] [--contexts 512,4096]

The executor here does nothing (it hands back a preallocated logits tensor), so each
step's time is the scheduler, the block manager, the step layout, sampling and the
detokenizer: the work a GPU waits on between graph replays unless it is hidden. With
`--vocab` small (the default, 1000) sampling is nearly free, as on a GPU where it
runs on the device; pass the model's vocabulary to include a CPU argmax over it.

Prints the median host time per decode step for each batch size and context length,
and per sequence. A step's cost should not grow with the context: at 32 sequences of
4,096 tokens it was 2.26 ms before a decode step stopped rehashing every full block
(now ~0.3 ms on the 2-core CI machine). `--frequency-penalty 0.5 --vocab 49152
--new-tokens 1000`: 8.7 ms a step at 32 sequences before the sampler kept its counts
incrementally, ~2.4 ms after.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch


class NullExecutor:
    """The executor interface with no model behind it."""

    block_size, max_tokens = 16, 2048

    def __init__(self, num_blocks: int, vocab: int):
        self.num_blocks = num_blocks
        self.logits = torch.randn(self.max_tokens, vocab)

    def forward(self, step):
        return self.logits[:step.logit_rows.shape[0]]


def host_step_us(tokenizer, batch: int, context: int, vocab: int, new_tokens: int,
                 frequency_penalty: float = 0.0) -> float:
    from rustinfer.runtime.engine import Engine
    from rustinfer.runtime.sampling import SamplingParams

    blocks = batch * (-(-(context + new_tokens) // 16) + 1)
    eng = Engine(NullExecutor(blocks, vocab), tokenizer, max_model_len=context + new_tokens + 16,
                 vocab_size=vocab, max_num_seqs=batch, max_num_batched_tokens=2048)
    params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True,
                            frequency_penalty=frequency_penalty)
    for i in range(batch):
        eng.add_request(f"r{i}", [(17 * i + j) % vocab for j in range(context)], params)
    steps = []
    while eng.has_unfinished():
        decoding = not any(s.in_prefill for s in eng.scheduler.running) and not eng.scheduler.waiting
        t0 = time.perf_counter()
        eng.step()
        if decoding:
            steps.append(time.perf_counter() - t0)
    return statistics.median(steps) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--contexts", default="512,4096")
    ap.add_argument("--vocab", type=int, default=1000,
                    help="logits per row (the model's vocabulary adds a CPU argmax over it)")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--frequency-penalty", type=float, default=0.0,
                    help="every request's (penalties make the sampler copy and edit the logits)")
    ap.add_argument("--tokenizer", default=None,
                    help="a checkpoint folder or GGUF (default: the default model's, fetched once)")
    args = ap.parse_args()
    from rustinfer.runtime.model_resolver import resolve_model
    from rustinfer.runtime.tokenizer import Tokenizer

    torch.set_num_threads(1)            # as the cpu target's engine process runs
    tokenizer = Tokenizer.load(args.tokenizer or resolve_model())
    print(f"engine host time per decode step (null executor, vocab {args.vocab}, "
          f"{args.new_tokens} new tokens per sequence, frequency penalty {args.frequency_penalty})")
    print(f"{'batch':>5} {'context':>8} {'us/step':>9} {'us/sequence':>12}")
    for context in map(int, args.contexts.split(",")):
        for batch in map(int, args.batches.split(",")):
            us = host_step_us(tokenizer, batch, context, args.vocab, args.new_tokens,
                              args.frequency_penalty)
            print(f"{batch:>5} {context:>8} {us:>9.0f} {us / batch:>12.1f}", flush=True)


if __name__ == "__main__":
    main()
