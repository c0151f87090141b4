"""CPU benchmark: rustinfer's cpu target (float32, int4) against its peers, in one run.

    .venv/bin/python bench/cpu.py [--model PATH.gguf] [--threads N] [--runs 3]

Every engine runs in its own subprocess (so load time and peak RSS are its
own) on the same 128-token prompt with the same thread count; engines that are
not installed are skipped with a note (bench/PEERS.md says how to install them):

    rustinfer fp32 / int4       the "cpu" target (ONNX Runtime), single sequence
    transformers fp32           LlamaForCausalLM loaded from the same GGUF
    onnxruntime-genai fp32/int4 built by its model builder from that model
    llama.cpp                   llama-cpp-python on the same GGUF file

Prints prefill tok/s, decode tok/s (median of --runs runs of 128 new tokens),
load time, peak RSS, the memory-bandwidth roofline (weight bytes read per token
/ measured bandwidth), ratios against each peer, and an accuracy report of every
engine against rustinfer fp32 (greedy agreement over 5 prompts x 32 tokens, free-
running and teacher-forced, and the perplexity of a paragraph). `--skip
rustinfer,transformers,genai,llamacpp` leaves only the accuracy report.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
PARAGRAPH = (
    "The history of computing is a story of abstraction. Early machines were programmed by "
    "rewiring panels; then came stored programs, assemblers, and compilers that let people "
    "describe what they wanted instead of how the hardware should do it. Each layer hid the "
    "one beneath it, and each was distrusted at first, because it cost speed. Over time the "
    "compilers got better than most people at the details, and the trade became obvious. "
    "Today the same argument plays out for machine learning: a model is written as a graph, "
    "and a compiler decides how to fuse its operations, where to keep its intermediate "
    "values, and which kernels to call on which device.")
PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,",
           "The three primary colors are", "Water boils at a temperature of"]


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_home() -> Path:
    root = Path(os.environ.get("RUSTINFER_CACHE", Path.home() / ".cache" / "rustinfer"))
    return root / "bench"


# -- workers (each runs in a subprocess and prints one JSON line) ------------------------

def worker_rustinfer(args, prompt):
    from test_onnx_cpu import BS, load
    from rustinfer.compiler.step_inputs import StepInputs

    started = time.perf_counter()
    ex = load(args.model, "cpu", max_model_len=512, max_tokens=256, threads=args.threads,
              quant=args.quant, accuracy_level=args.accuracy_level)
    load_s = time.perf_counter() - started
    blocks = list(range(512 // BS))
    prefill, decode = [], []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        logits = ex.forward(StepInputs.for_sequences([(prompt, 0, blocks)], BS))
        t1 = time.perf_counter()
        # numpy's argmax, as the engine's sampler and llama.cpp's loop below: torch's took
        # 112 us per 49152-logit row with one thread, ~1% of an int4 step
        token, cached = int(logits[-1].numpy().argmax()), len(prompt)
        for _ in range(args.new_tokens):
            logits = ex.forward(StepInputs.for_sequences([([token], cached, blocks)], BS))
            token, cached = int(logits[-1].numpy().argmax()), cached + 1
        t2 = time.perf_counter()
        prefill.append(len(prompt) / (t1 - t0))
        decode.append(args.new_tokens / (t2 - t1))
    meta = json.loads((ex.plan_dir / "meta.json").read_text())
    return dict(load_s=load_s, prefill=prefill, decode=decode, bytes_per_token=meta["bytes_per_token"])


def worker_transformers(args, prompt):
    import torch
    from transformers import LlamaForCausalLM

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    # From a float32 folder: transformers' own GGUF loading keeps the weights quantized
    # ("quantized with gguf") and dequantizes per call, which is not its fp32 speed.
    model = LlamaForCausalLM.from_pretrained(str(hf_folder(args.model)),
                                             dtype=torch.float32).eval()
    load_s = time.perf_counter() - started
    prefill, decode = [], []
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        for _ in range(args.runs):
            t0 = time.perf_counter()
            out = model(ids, use_cache=True)
            t1 = time.perf_counter()
            past, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
            for _ in range(args.new_tokens):
                out = model(token, past_key_values=past, use_cache=True)
                past, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
            t2 = time.perf_counter()
            prefill.append(len(prompt) / (t1 - t0))
            decode.append(args.new_tokens / (t2 - t1))
    return dict(load_s=load_s, prefill=prefill, decode=decode)


def worker_genai(args, prompt):
    import onnxruntime_genai as og

    folder = genai_model(args.model, args.precision, args.threads)
    started = time.perf_counter()
    model = og.Model(str(folder))
    load_s = time.perf_counter() - started
    prefill, decode = [], []
    for _ in range(args.runs):
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(prompt) + args.new_tokens + 1, do_sample=False)
        gen = og.Generator(model, params)
        t0 = time.perf_counter()
        gen.append_tokens(prompt)               # prefill; it also picks the first token
        t1 = time.perf_counter()
        for _ in range(args.new_tokens):
            gen.generate_next_token()
        t2 = time.perf_counter()
        prefill.append(len(prompt) / (t1 - t0))
        decode.append(args.new_tokens / (t2 - t1))
    return dict(load_s=load_s, prefill=prefill, decode=decode)


def worker_llamacpp(args, prompt):
    from llama_cpp import Llama

    started = time.perf_counter()
    llm = Llama(model_path=str(args.model), n_threads=args.threads, n_threads_batch=args.threads,
                n_ctx=512, n_batch=256, verbose=False)
    load_s = time.perf_counter() - started
    prefill, decode = [], []
    for _ in range(args.runs):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt)
        t1 = time.perf_counter()
        for _ in range(args.new_tokens):
            token = llm.sample(temp=0.0)
            llm.eval([token])
        t2 = time.perf_counter()
        prefill.append(len(prompt) / (t1 - t0))
        decode.append(args.new_tokens / (t2 - t1))
    return dict(load_s=load_s, prefill=prefill, decode=decode)


def worker_accuracy(args, prompt):
    """Each engine against rustinfer fp32 (the dequantized checkpoint, the reference):

    free-running   greedy agreement over 5 prompts x 32 tokens, position by position (the
                   issue's measure: one early flip of a near-tie changes the rest of the text,
                   so it mostly measures how soon two engines diverge)
    teacher-forced top-1 agreement on the fp32 continuation (each position sees the same
                   prefix; llama.cpp's "same top p" in its KL-divergence mode)
    perplexity     of PARAGRAPH (256 tokens)
    """
    import numpy as np
    from test_onnx_cpu import greedy, load, score

    from rustinfer.runtime.tokenizer import Tokenizer

    tok = Tokenizer.from_gguf(args.model)
    kw = dict(max_model_len=512, max_tokens=256, threads=args.threads)
    fp32 = load(args.model, "cpu", **kw)
    blocks = list(range(32))
    para = tok.encode(PARAGRAPH)[:256]
    prompts = [tok.encode(text) for text in PROMPTS]
    want = [greedy(fp32, p, 32, blocks) for p in prompts]
    total = sum(map(len, want))

    def report(all_logits, generate) -> dict:
        """all_logits(ids) -> [len(ids), vocab]; generate(prompt, n) -> n greedy ids."""
        free = sum(x == y for p, w in zip(prompts, want) for x, y in zip(w, generate(p, 32)))
        forced = 0
        for p, w in zip(prompts, want):
            logits = all_logits(p + w)
            forced += sum(int(logits[len(p) - 1 + i].argmax()) == t for i, t in enumerate(w))
        logits = np.asarray(all_logits(para)[:-1], np.float64)
        top = logits.max(1, keepdims=True)
        logz = np.log(np.exp(logits - top).sum(1)) + top[:, 0]
        ppl = float(np.exp(np.mean(logz - logits[np.arange(len(para) - 1), para[1:]])))
        return dict(free=free / total, forced=forced / total, ppl=ppl)

    def ours(ex) -> dict:
        return report(lambda ids: score(ex, ids, blocks), lambda p, n: greedy(ex, p, n, blocks))

    result = {"rustinfer fp32": ours(fp32)}
    for level in (4, 0):
        int4 = load(args.model, "cpu", quant="int4", accuracy_level=level, **kw)
        result[f"rustinfer int4 (accuracy_level {level})"] = ours(int4)
        del int4
    try:
        from llama_cpp import Llama
    except ImportError:
        pass
    else:                                   # the GGUF's own engine (int8 activations too)
        llm = Llama(model_path=str(args.model), n_threads=args.threads, n_ctx=512, n_batch=512,
                    logits_all=True, verbose=False)

        def lc_logits(ids):
            llm.reset()
            llm.eval(ids)
            return np.array(llm.scores[:len(ids)])

        def lc_generate(p, n):
            llm.reset()
            llm.eval(p)
            out = []
            for _ in range(n):
                out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
                llm.eval(out[-1:])
            return out

        result["llama.cpp (the GGUF)"] = report(lc_logits, lc_generate)
        del llm
    try:
        import onnxruntime_genai  # noqa: F401  (only to know the peer is installed)
    except ImportError:
        return result
    for precision in ("fp32", "int4"):      # fp32: checks that this harness drives it right
        result[f"ort-genai {precision}"] = report(*_genai_runner(args, precision))
    return result


def _genai_runner(args, precision):
    """(all_logits, generate) for GenAI's model: its own generator for greedy text, and its
    model.onnx in ONNX Runtime for every position's logits (the generator returns only the
    last one)."""
    import numpy as np
    import onnxruntime as ort
    import onnxruntime_genai as og

    folder = genai_model(args.model, precision, args.threads)
    model = og.Model(str(folder))
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    session = ort.InferenceSession(str(folder / "model.onnx"), so,
                                   providers=["CPUExecutionProvider"])
    past = [i.name for i in session.get_inputs() if i.name.startswith("past_key_values")]
    decoder = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]
    empty = np.zeros((1, decoder["num_key_value_heads"], 0, decoder["head_size"]), np.float32)

    def all_logits(ids):
        feed = {"input_ids": np.array([ids], np.int64),
                "attention_mask": np.ones((1, len(ids)), np.int64)}
        feed.update({name: empty for name in past})      # no cache: the whole text at once
        return session.run(["logits"], feed)[0][0]

    def generate(p, n):
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(p) + n, do_sample=False)
        gen = og.Generator(model, params)
        gen.append_tokens(p)
        out = []
        for _ in range(n):
            gen.generate_next_token()        # samples from the logits it has, appends
            out.append(int(gen.get_next_tokens()[0]))
        return out

    return all_logits, generate


def hf_folder(gguf: str) -> Path:
    """The GGUF as a float32 Hugging Face folder (our dequantized tensors), cached."""
    hf = bench_home() / (Path(gguf).stem + "-hf-fp32")
    if not (hf / "model.safetensors").exists():
        from safetensors.torch import save_file

        from rustinfer.runtime.checkpoint import open_checkpoint
        from rustinfer.runtime.tokenizer import Tokenizer

        hf.mkdir(parents=True, exist_ok=True)
        ckpt = open_checkpoint(gguf)
        (hf / "config.json").write_text(json.dumps({**ckpt.config, "torch_dtype": "float32"}))
        tok = Tokenizer.from_gguf(gguf)
        tok._backend.save(str(hf / "tokenizer.json"))
        (hf / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": tok.decode([1]),
            "eos_token": tok.decode([2]), "model_max_length": ckpt.config["max_position_embeddings"]}))
        save_file({n: ckpt.load(n).contiguous() for n in ckpt.names()}, str(hf / "model.safetensors"))
    return hf


def genai_model(gguf: str, precision: str, threads: int) -> Path:
    """ORT GenAI's builder output for the checkpoint (via the fp32 HF folder), cached."""
    hf, out = hf_folder(gguf), bench_home() / f"genai-{Path(gguf).stem}-{precision}"
    if not (out / "genai_config.json").exists():
        proc = subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder",
                               "-i", str(hf), "-o", str(out), "-p", precision, "-e", "cpu",
                               "-c", str(bench_home() / "genai-cache")],
                              capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"onnxruntime-genai builder failed: {proc.stderr[-2000:]}")
    cfg_file = out / "genai_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["model"]["decoder"].setdefault("session_options", {})["intra_op_num_threads"] = threads
    cfg_file.write_text(json.dumps(cfg, indent=1))
    return out


WORKERS = {"rustinfer": worker_rustinfer, "transformers": worker_transformers,
           "genai": worker_genai, "llamacpp": worker_llamacpp, "accuracy": worker_accuracy}


# -- the driver ------------------------------------------------------------------------------

def measure_bandwidth(threads: int) -> float:
    """GB/s of a float32 matrix-vector product over 512 MiB (what a decode step does)."""
    import torch

    torch.set_num_threads(threads)
    a, x = torch.randn(65536, 2048), torch.randn(2048)
    times = []
    for _ in range(6):
        t0 = time.perf_counter()
        torch.mv(a, x)
        times.append(time.perf_counter() - t0)
    return a.numel() * 4 / statistics.median(times[1:]) / 1e9


def run_worker(args, name, **extra) -> dict | None:
    cmd = [sys.executable, __file__, "--worker", name, "--model", str(args.model),
           "--threads", str(args.threads), "--runs", str(args.runs),
           "--new-tokens", str(args.new_tokens), "--accuracy-level", str(args.accuracy_level),
           "--prompt-ids", json.dumps(args.prompt)]
    for k, v in extra.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        print(f"  skipped {name} {extra or ''}: {tail}")
        return None
    return json.loads(lines[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="a llama GGUF file (default: SmolLM2-135M Q4_1)")
    ap.add_argument("--threads", type=int, default=None, help="default: physical cores")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--accuracy-level", type=int, default=4, help=argparse.SUPPRESS)
    ap.add_argument("--skip", default="", help="comma list: rustinfer,transformers,genai,llamacpp,accuracy")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--quant", default="none", help=argparse.SUPPRESS)
    ap.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    ap.add_argument("--prompt-ids", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        # The driver resolved the model and tokenized the prompt, so a peer's worker loads
        # nothing of rustinfer (nor torch): the peak RSS it reports is the peer's own.
        result = WORKERS[args.worker](args, json.loads(args.prompt_ids))
        print(json.dumps({**result, "rss_mib": rss_mib()}))
        return
    from rustinfer.runtime.model_resolver import resolve_model
    from rustinfer.runtime.cpu_cores import physical_cores
    from rustinfer.runtime.tokenizer import Tokenizer

    args.model = str(resolve_model(args.model))
    args.threads = args.threads or physical_cores()
    text = " ".join([PARAGRAPH] * 4)
    prompt = args.prompt = Tokenizer.from_gguf(args.model).encode(text)[:args.prompt_tokens]

    skip = set(filter(None, args.skip.split(",")))
    # Sampled before the runs and after each round: the machine's other tenants move it by
    # a third from minute to minute, and the roofline should see the minutes the runs saw.
    bandwidths = [measure_bandwidth(args.threads)]
    print(f"model {Path(args.model).name}, {args.threads} threads, prompt {len(prompt)} tokens, "
          f"{args.new_tokens} new tokens x {args.runs} runs")
    engines = [("rustinfer fp32", "rustinfer", dict(quant="none")),
               ("rustinfer int4", "rustinfer", dict(quant="int4")),
               ("rustinfer int4 acc0", "rustinfer", dict(quant="int4", accuracy_level=0)),
               ("transformers fp32", "transformers", {}),
               ("ort-genai fp32", "genai", dict(precision="fp32")),
               ("ort-genai int4", "genai", dict(precision="int4")),
               ("llama.cpp (gguf)", "llamacpp", {})]
    active = []
    for label, worker, extra in engines:
        if worker in skip:
            continue
        if worker == "genai" and not _importable("onnxruntime_genai"):
            print(f"  skipped {label}: onnxruntime-genai is not installed (bench/PEERS.md)")
            continue
        if worker == "llamacpp" and not _importable("llama_cpp"):
            print(f"  skipped {label}: llama-cpp-python is not installed (bench/PEERS.md)")
            continue
        # a first run builds/compiles what the engine caches, so load_s is a warm start
        if run_worker(args, worker, **{**extra, "runs": 0, "new_tokens": 0}) is not None:
            active.append((label, worker, extra))
    # Runs interleave engines (one run each, round robin) so that load from other tenants of
    # this machine, which drifts over minutes, falls on every engine alike.
    results: dict[str, dict] = {}
    for _ in range(args.runs):
        for label, worker, extra in active:
            r = run_worker(args, worker, **{**extra, "runs": 1})
            if r is None:
                continue
            acc = results.setdefault(label, {"prefill": [], "decode": [], "load_s": [],
                                             "rss_mib": []})
            for key in ("prefill", "decode"):
                acc[key] += r[key]
            acc["load_s"].append(r["load_s"])
            acc["rss_mib"].append(r["rss_mib"])
            acc["bytes_per_token"] = r.get("bytes_per_token")
        bandwidths.append(measure_bandwidth(args.threads))
    bw = statistics.median(bandwidths)
    print(f"measured bandwidth {bw:.1f} GB/s (median of {len(bandwidths)} samples, "
          f"{min(bandwidths):.1f}-{max(bandwidths):.1f}: before the runs and after each round)")
    for r in results.values():
        r["load_s"], r["rss_mib"] = statistics.median(r["load_s"]), max(r["rss_mib"])
    print(f"\n{'engine':<20} {'prefill tok/s':>13} {'decode tok/s':>13} {'load s':>7} "
          f"{'peak RSS MiB':>12} {'roofline tok/s':>15}")
    for label, r in results.items():
        roof = f"{bw * 1e9 / r['bytes_per_token']:.0f}" if r.get("bytes_per_token") else "-"
        print(f"{label:<20} {statistics.median(r['prefill']):>13.0f} "
              f"{statistics.median(r['decode']):>13.1f} {r['load_s']:>7.2f} {r['rss_mib']:>12.0f} "
              f"{roof:>15}")
    print()
    for ours in ("rustinfer fp32", "rustinfer int4", "rustinfer int4 acc0"):
        if ours not in results:
            continue
        o = results[ours]
        if o.get("bytes_per_token"):
            roof = bw * 1e9 / o["bytes_per_token"]
            print(f"{ours}: decode at {100 * statistics.median(o['decode']) / roof:.0f}% of its "
                  f"roofline ({o['bytes_per_token'] / 2**20:.0f} MiB/token)")
        for label, r in results.items():
            if not label.startswith("rustinfer"):
                print(f"  vs {label:<18} decode x{statistics.median(o['decode']) / statistics.median(r['decode']):.2f}"
                      f"  prefill x{statistics.median(o['prefill']) / statistics.median(r['prefill']):.2f}")
    if "accuracy" not in skip:
        acc = run_worker(args, "accuracy")
        if acc:
            base = acc["rustinfer fp32"]["ppl"]
            print(f"\naccuracy against rustinfer fp32 (5 prompts x 32 greedy tokens; perplexity "
                  f"of a {len(PARAGRAPH.split())}-word paragraph, fp32 {base:.3f})")
            print(f"  {'engine':<36} {'free-running':>12} {'teacher-forced':>15} {'perplexity':>18}")
            for name, r in acc.items():
                if name == "rss_mib" or name == "rustinfer fp32":
                    continue
                print(f"  {name:<36} {100 * r['free']:>11.1f}% {100 * r['forced']:>14.1f}% "
                      f"{r['ppl']:>9.3f} ({100 * (r['ppl'] / base - 1):+.2f}%)")


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


if __name__ == "__main__":
    main()
