"""The Python API: `LLM(model=...)`, `generate`, `chat`, `logits`.

    from rustinfer.runtime import LLM, SamplingParams
    llm = LLM()                                   # the default model on the default target
    outs = llm.generate(["The capital of France is", "1, 2, 3,"],
                        SamplingParams(max_tokens=8, temperature=0))
    print(outs[0].text)

Loading: resolve the model (folder, .gguf or alias) -> open the checkpoint ->
pick the spec from config.json -> bind it (every weight name and shape is
checked) -> build the target's executor -> an `Engine` that batches requests.
`generate` hands all prompts to the engine at once (continuous batching).
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from rustinfer.compiler.bind import bind, select_spec
from rustinfer.compiler.rope_config import complete_longrope, uses_longrope
from rustinfer.compiler.spec import load_spec
from rustinfer.compiler.step_inputs import StepInputs

from .checkpoint import open_checkpoint
from .engine import Engine
from .engine_api import RequestError, TokenLogprob
from .model_resolver import resolve_model
from .sampling import SamplingParams
from .targets import LoadContext, build_executor, resolve_target

DEFAULT_MAX_MODEL_LEN = 8192   # the context unless max_model_len says otherwise
DEFAULT_KV_CACHE_BYTES = 1 << 30


@dataclass
class RequestOutput:
    prompt_token_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None      # "stop" (EOS, stop string or token) or "length"
    logprobs: list[TokenLogprob] | None = None
    prompt_logprobs: list[TokenLogprob | None] | None = None
    choices: list["RequestOutput"] = field(default_factory=list)   # all n choices (n > 1)


class LLM:
    def __init__(self, model: str | Path | None = None, target: str = "auto",
                 spec: str | Path | None = None, max_model_len: int | None = None,
                 block_size: int = 16, max_num_batched_tokens: int = 512,
                 max_num_seqs: int = 16, num_kv_blocks: int | None = None,
                 kv_cache_bytes: int = DEFAULT_KV_CACHE_BYTES,
                 enable_prefix_caching: bool = True, overlap_decode: bool = True,
                 **target_options):
        """target: "auto" (cuda with a GPU, else cpu), "cpu" (ONNX Runtime; options
        quant="int4"|"int8", threads=N), "cpu-torch" (the compiled plan on torch
        kernels), "cuda" (Triton + CUDA graphs) or "reference" (the IR interpreter,
        the oracle). max_num_batched_tokens bounds one step
        (longer prompts are prefilled in chunks); the KV cache has num_kv_blocks
        blocks of block_size tokens (default: as many as fit in kv_cache_bytes, and
        at least one full-length sequence). overlap_decode: on targets that keep tokens
        on the device (cuda), launch each decode step before reading the last one's tokens
        back (see runtime/engine.py)."""
        started = time.perf_counter()
        self.model_path = resolve_model(None if model is None else str(model))
        self.checkpoint = open_checkpoint(self.model_path)
        self.config = self.checkpoint.config
        self.spec_path = str(spec or select_spec(self.config))
        self.spec = load_spec(self.spec_path)
        self.graph = bind(self.spec, self.config, self.checkpoint)
        self.tokenizer = _load_tokenizer(self.checkpoint)
        limit = int(self.graph.symbols.get("max_pos") or DEFAULT_MAX_MODEL_LEN)
        self.max_model_len = min(limit, max_model_len or DEFAULT_MAX_MODEL_LEN)
        if uses_longrope(self.config):
            # LongRoPE's factors depend on the context served (compiler/rope_config.py)
            self.config = complete_longrope(self.config, self.max_model_len)
            self.graph = bind(self.spec, self.config, self.checkpoint)
        self.block_size = block_size
        if num_kv_blocks is None:
            per_block = sum(block_size * v.shape[2] * v.shape[3] * 4 for v in self.graph.caches())
            per_seq = -(-self.max_model_len // block_size)
            # As many as the byte budget allows, but never more than max_num_seqs full-length
            # sequences can use, and always room for one.
            num_kv_blocks = max(min(kv_cache_bytes // max(per_block, 1), max_num_seqs * per_seq),
                                per_seq + 1)
        self.target = target = resolve_target(target)
        ctx = LoadContext(graph=self.graph, spec_path=self.spec_path, config=self.config,
                          checkpoint=self.checkpoint, num_blocks=int(num_kv_blocks),
                          block_size=block_size, max_model_len=self.max_model_len,
                          max_step_tokens=max_num_batched_tokens, max_num_seqs=max_num_seqs,
                          options=dict(target_options))
        self.executor = build_executor(target, ctx)
        self.plan_dir = getattr(self.executor, "plan_dir", None)
        self.plan_cached = getattr(self.executor, "plan_cached", None)
        self.engine = Engine(self.executor, self.tokenizer, max_model_len=self.max_model_len,
                             vocab_size=int(self.graph.symbols["vocab"]),
                             max_num_seqs=max_num_seqs,
                             max_num_batched_tokens=max_num_batched_tokens,
                             enable_prefix_caching=enable_prefix_caching,
                             model_name=_model_name(model, self.model_path),
                             overlap_decode=overlap_decode)
        self.max_step_tokens = self.engine.scheduler.max_tokens
        self._ids = itertools.count()
        self.load_seconds = time.perf_counter() - started

    # -- token-level API ---------------------------------------------------
    def logits(self, token_ids: list[int]) -> np.ndarray:
        """float32 logits [T, vocab] for every position of one sequence."""
        ids = self._check(list(token_ids))
        blocks = self.engine.blocks
        table: list[int] = []
        blocks.ensure_capacity(table, len(ids))        # private blocks, never prefix-cached
        try:
            rows = []
            for start in range(0, len(ids), self.max_step_tokens):
                chunk = ids[start:start + self.max_step_tokens]
                step = StepInputs.for_sequences([(chunk, start, table)], self.block_size,
                                                logits="all")
                rows.append(self.executor.forward(step).float().numpy().copy())
        finally:
            blocks.free(table)
        return np.concatenate(rows)

    def generate(self, prompts: str | list[int] | Iterable[str | list[int]],
                 params: SamplingParams | None = None) -> list[RequestOutput]:
        """Complete every prompt (text, or a list of token ids), all batched together."""
        params = params or SamplingParams()
        if isinstance(prompts, str) or (isinstance(prompts, list) and prompts
                                        and isinstance(prompts[0], int)):
            prompts = [prompts]
        outputs: dict[str, RequestOutput] = {}
        for prompt in prompts:
            rid = f"llm-{next(self._ids)}"
            ids = self._encode(prompt)
            self.engine.add_request(rid, ids, params)
            outputs[rid] = RequestOutput(prompt_token_ids=ids, choices=[
                RequestOutput(prompt_token_ids=ids) for _ in range(params.n)])
        while self.engine.has_unfinished():
            for ev in self.engine.step():
                out = outputs[ev.request_id]
                choice = out.choices[ev.index]
                _apply(choice, ev)
                if ev.prompt_logprobs is not None:
                    out.prompt_logprobs = (out.prompt_logprobs or []) + ev.prompt_logprobs
        results = []
        for out in outputs.values():
            first = out.choices[0]
            out.token_ids, out.text, out.finish_reason = first.token_ids, first.text, \
                first.finish_reason
            out.logprobs = first.logprobs
            for choice in out.choices:
                choice.prompt_logprobs = out.prompt_logprobs
            results.append(out)
        return results

    def chat(self, messages: list[dict], params: SamplingParams | None = None,
             tools: list | None = None) -> RequestOutput:
        ids = self._require_tokenizer().encode_chat(messages, add_generation_prompt=True,
                                                     tools=tools)
        return self.generate([ids], params)[0]

    def stream_text(self, prompt: str | list[int], params: SamplingParams | None = None
                    ) -> Iterator[str]:
        """Yield text as it is generated (never half a UTF-8 character)."""
        rid = f"llm-{next(self._ids)}"
        self.engine.add_request(rid, self._encode(prompt), params or SamplingParams())
        try:
            while self.engine.has_unfinished():
                for ev in self.engine.step():
                    if ev.request_id == rid and ev.new_text:
                        yield ev.new_text
        finally:
            self.engine.abort(rid)
            while self.engine.has_unfinished():     # drain the abort event
                self.engine.step()

    # -- helpers -------------------------------------------------------------
    def _encode(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            return self._require_tokenizer().encode(prompt)
        return list(prompt)

    def _check(self, ids: list[int]) -> list[int]:
        vocab = int(self.graph.symbols.get("vocab", 0))
        if not ids:
            raise RequestError("the prompt is empty: give at least one token", param="prompt")
        bad = [t for t in ids if not 0 <= int(t) < vocab]
        if bad:
            raise RequestError(f"token ids out of range [0, {vocab}): {bad[:5]}", param="prompt")
        if len(ids) > self.engine.max_model_len:
            raise RequestError(f"the prompt has {len(ids)} tokens; this model's context is "
                               f"{self.engine.max_model_len}: shorten it",
                               "context_length_exceeded", param="prompt")
        return [int(t) for t in ids]

    def _require_tokenizer(self):
        if self.tokenizer is None:
            raise ValueError(f"{self.model_path} has no tokenizer (tokenizer.json): "
                             "pass token ids instead of text")
        return self.tokenizer


def _apply(out: RequestOutput, ev) -> None:
    out.token_ids += ev.new_token_ids
    out.text += ev.new_text
    if ev.logprobs is not None:
        out.logprobs = (out.logprobs or []) + ev.logprobs
    if ev.finished:
        out.finish_reason = ev.finish_reason


def _model_name(requested, path: Path) -> str:
    if requested is None:
        from .model_resolver import DEFAULT_MODEL

        return DEFAULT_MODEL
    return Path(str(requested)).name if Path(str(requested)).exists() else str(requested)


def has_tokenizer(checkpoint) -> bool:
    """Whether the checkpoint carries a tokenizer (tokenizer.json; a GGUF's tokenizer.ggml.*)."""
    if checkpoint.format == "gguf":
        return bool(checkpoint.metadata.get("tokenizer.ggml.tokens"))
    return (Path(checkpoint.path) / "tokenizer.json").exists()


def no_tokenizer_message(checkpoint) -> str | None:
    """What to do when the checkpoint has no tokenizer (None when it has one)."""
    if has_tokenizer(checkpoint):
        return None
    where = ("this GGUF file has no tokenizer.ggml.* metadata; convert the model again with "
             "its tokenizer (llama.cpp's convert_hf_to_gguf.py writes it)"
             if checkpoint.format == "gguf" else
             "a folder needs tokenizer.json (and tokenizer_config.json for its chat template) "
             "next to config.json")
    return f"{checkpoint.path} has no tokenizer: {where}"


def _load_tokenizer(checkpoint):
    from .tokenizer import Tokenizer

    if not has_tokenizer(checkpoint):
        return None  # weights only: the token-id API still works
    if checkpoint.format == "gguf":
        return Tokenizer.from_gguf(checkpoint.path)
    return Tokenizer.from_hf_dir(checkpoint.path)
