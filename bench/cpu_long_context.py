"""Decode speed at long contexts on the cpu target: GQA against the long-context graph.

    .venv/bin/python bench/cpu_long_context.py [--model GGUF] [--quant none,int4]
        [--contexts 256,1024,2048,4096] [--steps 16] [--threads N] [--skip llamacpp]

One sequence is prefilled up to each context in turn (the same text, one model per mode),
then `steps` tokens are decoded there: median ms per decode step for

    gqa    model.onnx alone (GroupQueryAttention: K and V streamed once per query head)
    long   decode runs on decode_long.onnx (compiler/onnx_long_decode.py: once per KV head)
    auto   what the executor picks by itself (runtime/onnx_long_run.py: LongDecode.wanted)

and llama.cpp (llama-cpp-python, its default f16 KV cache) on the same GGUF and threads,
when installed. Prints each mode's ratio against gqa and against llama.cpp. The modes
alternate at every context so that the machine's other tenants slow them alike.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

NEVER = 10 ** 9


def decode_ms(step, steps: int) -> float:
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


class Rustinfer:
    def __init__(self, model: str, quant: str, threads: int, max_len: int, long_from: int | None):
        from test_onnx_cpu import BS, load

        self.bs, self.blocks = BS, list(range(max_len // BS))
        self.ex = load(model, "cpu", max_model_len=max_len, max_tokens=256, threads=threads,
                       quant=quant, long_decode_from=long_from)
        self.cached, self.token = 0, 1

    def prefill_to(self, tokens: list[int], context: int) -> None:
        from rustinfer.compiler.step_inputs import StepInputs

        while self.cached < context:
            chunk = tokens[self.cached:min(context, self.cached + 256)]
            step = StepInputs.for_sequences([(chunk, self.cached, self.blocks)], self.bs)
            self.token = int(self.ex.forward(step)[-1].numpy().argmax())
            self.cached += len(chunk)

    def step(self) -> None:
        from rustinfer.compiler.step_inputs import StepInputs

        step = StepInputs.for_sequences([([self.token], self.cached, self.blocks)], self.bs)
        self.token = int(self.ex.forward(step)[-1].numpy().argmax())
        self.cached += 1


class LlamaCpp:
    def __init__(self, model: str, threads: int, max_len: int):
        from llama_cpp import Llama

        self.llm = Llama(model_path=model, n_threads=threads, n_threads_batch=threads,
                         n_ctx=max_len, n_batch=256, verbose=False)
        self.cached = 0

    def prefill_to(self, tokens: list[int], context: int) -> None:
        if context > self.cached:
            self.llm.eval(tokens[self.cached:context])
            self.cached = context

    def step(self) -> None:
        self.llm.eval([self.llm.sample(temp=0.0)])
        self.cached += 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="a llama GGUF (default: SmolLM2-135M Q4_1)")
    ap.add_argument("--quant", default="none,int4")
    ap.add_argument("--contexts", default="256,1024,2048,4096")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--skip", default="", help="llamacpp")
    args = ap.parse_args()
    from rustinfer.runtime.cpu_cores import physical_cores
    from rustinfer.runtime.model_resolver import resolve_model
    from rustinfer.runtime.tokenizer import Tokenizer
    from cpu import PARAGRAPH

    model = str(resolve_model(args.model))
    threads = args.threads or physical_cores()
    contexts = [int(c) for c in args.contexts.split(",")]
    max_len = 1 << (max(contexts) + args.steps * 4).bit_length()
    text = Tokenizer.from_gguf(model).encode(" ".join([PARAGRAPH] * 200))
    tokens = (text * (max_len // len(text) + 1))[:max_len]
    print(f"model {Path(model).name}, {threads} threads, {args.steps} decode steps at each "
          "context (median ms per step)")
    for quant in args.quant.split(","):
        peers = {}
        if "llamacpp" not in args.skip:
            try:
                peers["llama.cpp"] = LlamaCpp(model, threads, max_len)
            except ImportError:
                print("  llama.cpp: llama-cpp-python is not installed (see bench/PEERS.md)")
        engines = {"gqa": Rustinfer(model, quant, threads, max_len, NEVER),
                   "long": Rustinfer(model, quant, threads, max_len, 0),
                   "auto": Rustinfer(model, quant, threads, max_len, None), **peers}
        print(f"\nrustinfer {'fp32' if quant == 'none' else quant}")
        print(f"  {'context':>8} " + " ".join(f"{k:>10}" for k in engines)
              + "   long/gqa  auto/gqa" + ("  auto vs llama.cpp" if peers else ""))
        for context in contexts:
            ms = {}
            for name, engine in engines.items():
                # every engine decodes at the same positions: past `context` plus its steps
                engine.prefill_to(tokens, context)
                ms[name] = decode_ms(engine.step, args.steps)
            line = f"  {context:>8} " + " ".join(f"{ms[k]:>10.1f}" for k in engines)
            line += f"   x{ms['gqa'] / ms['long']:.2f}     x{ms['gqa'] / ms['auto']:.2f}"
            if "llama.cpp" in ms:
                line += f"     x{ms['llama.cpp'] / ms['auto']:.2f}"
            print(line, flush=True)
        del engines, peers


if __name__ == "__main__":
    main()
