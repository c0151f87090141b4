"""The Python API: `LLM(model=...)`, `generate`, `chat`, `logits`.

    from rustinfer.runtime import LLM, SamplingParams
    llm = LLM()                                   # the default model on the reference target
    out = llm.generate(["The capital of France is"], SamplingParams(max_tokens=8, temperature=0))
    print(out[0].text)

Loading: resolve the model (folder, .gguf or alias) -> open the checkpoint ->
pick the spec from config.json -> bind it (every weight name and shape is
checked) -> load the weights -> build the target's executor.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from rustinfer.compiler.bind import bind, select_spec
from rustinfer.compiler.spec import load_spec
from rustinfer.compiler.step_inputs import StepInputs

from .checkpoint import open_checkpoint
from .model_resolver import resolve_model
from .sampling import Sampler, SamplingParams
from .stop import StopChecker
from .targets import LoadContext, build_executor

DEFAULT_MAX_MODEL_LEN = 8192  # the KV cache is sized for this unless max_model_len says otherwise


@dataclass
class RequestOutput:
    prompt_token_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None      # "stop" (EOS, stop string or token) or "length"


class LLM:
    def __init__(self, model: str | Path | None = None, target: str = "cpu-torch",
                 spec: str | Path | None = None, max_model_len: int | None = None,
                 block_size: int = 16, max_num_batched_tokens: int = 512,
                 **target_options):
        """target: "cpu-torch" (the compiled plan on torch kernels) or "reference"
        (the IR interpreter, the oracle). max_num_batched_tokens bounds one step;
        longer prompts are prefilled in chunks."""
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
        self.block_size = block_size
        blocks = math.ceil(self.max_model_len / block_size)
        self.target = target
        ctx = LoadContext(graph=self.graph, spec_path=self.spec_path, config=self.config,
                          checkpoint=self.checkpoint, num_blocks=blocks, block_size=block_size,
                          max_model_len=self.max_model_len,
                          max_step_tokens=max_num_batched_tokens, options=dict(target_options))
        self.executor = build_executor(target, ctx)
        self.max_step_tokens = min(self.executor.max_tokens, max_num_batched_tokens)
        self.plan_dir = getattr(self.executor, "plan_dir", None)
        self.plan_cached = getattr(self.executor, "plan_cached", None)
        self.load_seconds = time.perf_counter() - started

    # -- token-level API ---------------------------------------------------
    def logits(self, token_ids: list[int]) -> np.ndarray:
        """float32 logits [T, vocab] for every position of one sequence."""
        ids = self._check_prompt(list(token_ids), extra=0)
        blocks = self._blocks(len(ids))
        rows = []
        for start in range(0, len(ids), self.max_step_tokens):
            chunk = ids[start:start + self.max_step_tokens]
            step = StepInputs.for_sequences([(chunk, start, blocks)], self.block_size, logits="all")
            rows.append(self.executor.forward(step).float().numpy().copy())
        return np.concatenate(rows)

    def generate(self, prompts: str | list[int] | Iterable[str | list[int]],
                 params: SamplingParams | None = None) -> list[RequestOutput]:
        """Complete each prompt (text, or a list of token ids)."""
        params = params or SamplingParams()
        if isinstance(prompts, str) or (isinstance(prompts, list) and prompts
                                        and isinstance(prompts[0], int)):
            prompts = [prompts]
        outputs = []
        for prompt in prompts:
            ids = self._encode(prompt)
            out = RequestOutput(prompt_token_ids=ids)
            for _ in self.stream_tokens(ids, params, out):
                pass
            outputs.append(out)
        return outputs

    def chat(self, messages: list[dict], params: SamplingParams | None = None,
             tools: list | None = None) -> RequestOutput:
        ids = self._require_tokenizer().encode_chat(messages, add_generation_prompt=True,
                                                     tools=tools)
        return self.generate([ids], params)[0]

    def stream_text(self, prompt: str | list[int], params: SamplingParams | None = None
                    ) -> Iterator[str]:
        """Yield text as it is generated (never half a UTF-8 character)."""
        ids = self._encode(prompt)
        yield from self.stream_tokens(ids, params or SamplingParams(),
                                      RequestOutput(prompt_token_ids=ids))

    def stream_tokens(self, prompt_ids: list[int], params: SamplingParams,
                      out: RequestOutput) -> Iterator[str]:
        """Generate into `out`, yielding each new piece of text."""
        ids = self._check_prompt(prompt_ids, extra=1)
        budget = min(params.max_tokens, self.max_model_len - len(ids))
        sampler = Sampler(params)
        stop = StopChecker(self.tokenizer, params)
        blocks = self._blocks(len(ids) + budget)
        # Prefill in chunks of at most max_step_tokens; only the last chunk's logits matter.
        cached = 0
        while len(ids) - cached > self.max_step_tokens:
            chunk = ids[cached:cached + self.max_step_tokens]
            self.executor.forward(StepInputs.for_sequences([(chunk, cached, blocks)],
                                                           self.block_size))
            cached += len(chunk)
        new = ids[cached:]
        while True:
            step = StepInputs.for_sequences([(new, cached, blocks)], self.block_size)
            logits = self.executor.forward(step)[-1]
            cached += len(new)
            token = sampler(logits)
            out.token_ids.append(token)
            piece, reason = stop.push(token)
            if reason is None and len(out.token_ids) >= budget:
                reason = "length"
                piece += stop.flush()
            out.text += piece
            if piece:
                yield piece
            if reason is not None:
                out.finish_reason = reason
                return
            new = [token]

    # -- helpers -------------------------------------------------------------
    def _blocks(self, n_tokens: int) -> list[int]:
        return list(range(math.ceil(max(n_tokens, 1) / self.block_size)))

    def _encode(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            return self._require_tokenizer().encode(prompt)
        return list(prompt)

    def _check_prompt(self, ids: list[int], extra: int) -> list[int]:
        vocab = int(self.graph.symbols.get("vocab", 0))
        if not ids:
            raise ValueError("the prompt is empty: give at least one token")
        bad = [t for t in ids if not 0 <= int(t) < vocab]
        if bad:
            raise ValueError(f"token ids out of range [0, {vocab}): {bad[:5]}")
        if len(ids) + extra > self.max_model_len:
            raise ValueError(f"the prompt has {len(ids)} tokens; this model's context is "
                             f"{self.max_model_len} (max_model_len): shorten the prompt")
        return [int(t) for t in ids]

    def _require_tokenizer(self):
        if self.tokenizer is None:
            raise ValueError(f"{self.model_path} has no tokenizer (tokenizer.json): "
                             "pass token ids instead of text")
        return self.tokenizer


def _load_tokenizer(checkpoint):
    from .tokenizer import Tokenizer

    if checkpoint.format == "gguf":
        return Tokenizer.from_gguf(checkpoint.path)
    if (Path(checkpoint.path) / "tokenizer.json").exists():
        return Tokenizer.from_hf_dir(checkpoint.path)
    return None
