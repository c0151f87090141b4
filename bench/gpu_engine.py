"""The engine on the cuda target, as `rustinfer bench` runs it, with random bf16 weights.

    python bench/gpu_engine.py [--out DIR] [--models 1b] [--config FILE] [--target cuda]

bench/gpu.py times the compiled step from a tight loop; a server runs it through the
engine: scheduler, block tables, StepInputs layout, the sampler (on the GPU since the
engine samples where the executor leaves the logits) and the stop rules. This writes a
Hugging Face folder with a config from bench/models and random weights
(model.safetensors, no tokenizer: the engine then skips detokenization, which costs the
same on any target), loads it with LLM(target=...) and runs runtime.bench_cmd.bench:

    prefill   one 128-token prompt: tokens/s to the first token
    decode    its next 64 tokens: median engine step -> tokens/s
    batch N   N such requests at once (8 and 32): aggregate tokens/s
    sampling  the decode step with temperature 0.8 and top_p 0.95 (OpenAI's knobs: top_p
              without top_k sorts each whole row on the GPU), and with top_k 50 too,
              against the greedy step, at 1 and 8 requests

and, in the same run, the same executor stepped from a tight loop as bench/gpu.py does
(StepInputs of one sequence, the step, argmax read back): engine step / bare step is
what the engine adds. Writes engine.md into --out. --config and --target
cpu-torch run the same path on a small config on a CPU (how the script is checked
without a GPU).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu import MODELS, REPO, RandomCheckpoint, replay_ms  # noqa: E402


def random_folder(config: dict, folder: Path, device: str) -> Path:
    """config.json + model.safetensors of random weights (bf16, as bench/gpu.py's)."""
    from safetensors.torch import save_file

    ckpt = RandomCheckpoint(config, device=device)
    save_file({name: ckpt.load(name).cpu().contiguous() for name in ckpt.names()},
              str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def bare_step_ms(llm, steps: int = 64, context: int = 128) -> float:
    """Median ms of a bs=1 decode step driven directly, without the engine (its KV blocks
    are private: the engine is idle between bench runs)."""
    from rustinfer.compiler.step_inputs import StepInputs
    from rustinfer.runtime.sampling import greedy_argmax

    ex, bs = llm.executor, llm.block_size
    blocks = llm.engine.blocks
    table: list[int] = []
    blocks.ensure_capacity(table, context + steps)
    try:
        forward = getattr(ex, "forward_device", None) or ex.forward
        forward(StepInputs.for_sequences([(list(range(context)), 0, table)], bs))
        tok, times = 1, []
        for i in range(steps):
            t0 = time.perf_counter()
            tok = greedy_argmax(forward(StepInputs.for_sequences([([tok], context + i, table)],
                                                                 bs))).tolist()[0]
            times.append(time.perf_counter() - t0)
    finally:
        blocks.free(table)
    return 1e3 * statistics.median(times[3:])


def bench_model(config: dict, target: str, device: str) -> list[str]:
    from rustinfer.runtime import LLM
    from rustinfer.runtime.bench_cmd import bench, run_requests

    with tempfile.TemporaryDirectory(prefix="rustinfer-engine-") as tmp:
        started = time.perf_counter()
        folder = random_folder(config, Path(tmp), device)
        written = time.perf_counter() - started
        llm = LLM(model=str(folder), target=target, max_model_len=1024, max_num_seqs=32,
                  max_num_batched_tokens=512)
        lines = [f"random weights written in {written:.1f} s; loaded (compile, upload, "
                 f"graph capture) in {llm.load_seconds:.1f} s"]
        lines += bench(llm, prompt_tokens=128, new_tokens=64, batches=(8, 32))
        one = run_requests(llm, 1, 128, 64, seed=2)     # the engine's step, measured again
        engine_ms = 1e3 * statistics.median(one["steps"])
        overlap, llm.engine.overlap_decode = llm.engine.overlap_decode, False
        plain = run_requests(llm, 1, 128, 64, seed=3)    # each step waits for its tokens
        plain_ms = 1e3 * statistics.median(plain["steps"])
        llm.engine.overlap_decode = overlap              # (False on a CPU target)
        for n in (1, 8):
            greedy = run_requests(llm, n, 128, 64, seed=4)
            cells = [f"greedy {1e3 * statistics.median(greedy['steps']):.3f}"]
            for label, knobs in (("top_p 0.95", {"temperature": 0.8, "top_p": 0.95}),
                                 ("top_p 0.95 + top_k 50", {"temperature": 0.8, "top_p": 0.95,
                                                            "top_k": 50})):
                r = run_requests(llm, n, 128, 64, seed=5, sampling=knobs)
                cells.append(f"{label} {1e3 * statistics.median(r['steps']):.3f}")
            lines.append(f"sampling, {n} request{'s' * (n > 1)}, engine step ms: " + ", ".join(cells))
        bare = bare_step_ms(llm)
        lines.append(f"bare step (no engine) {bare:.3f} ms; engine step {engine_ms:.3f} ms: "
                     f"engine / bare {engine_ms / bare:.2f}x")
        lines.append(f"engine step with overlapped decoding {engine_ms:.3f} ms, without "
                     f"{plain_ms:.3f} ms ({plain_ms / engine_ms:.2f}x)"
                     + (f"; the graph replayed alone {replay_ms(llm.executor.graphs[1]):.3f} ms"
                        if getattr(llm.executor, "graphs", None) else ""))
        del llm
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=".")
    p.add_argument("--models", default="1b", help=f"comma-separated, of {sorted(MODELS)}")
    p.add_argument("--config", help="a config.json to run instead of --models")
    p.add_argument("--target", default="cuda")
    args = p.parse_args(argv)
    device = "cuda" if args.target == "cuda" else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        print("bench/gpu_engine.py: no CUDA device (use --target cpu-torch --config FILE to "
              "check the script on a CPU)", file=sys.stderr)
        return 2
    configs = ({Path(args.config).stem: Path(args.config)} if args.config else
               {m: REPO / "bench" / "models" / MODELS[m] / "config.json"
                for m in args.models.split(",")})
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    report = [f"Engine on target {args.target}, {name}; {time.strftime('%Y-%m-%d')}"]
    for label, path in configs.items():
        report += ["", f"{label} ({path.parent.name}):"]
        try:
            lines = bench_model(json.loads(path.read_text()), args.target, device)
        except Exception as err:             # noqa: BLE001 (one model failing keeps the rest)
            lines = [f"failed: {type(err).__name__}: {err}"[:500]]
        for line in lines:
            print(line, flush=True)
        report += ["    " + line for line in lines]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "engine.md").write_text("\n".join(report) + "\n")
    print("\n".join(report))
    return 0 if not any("failed:" in line for line in report) else 1


if __name__ == "__main__":
    sys.exit(main())
