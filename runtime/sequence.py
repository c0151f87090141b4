"""One sequence being generated: its tokens, cache blocks, sampling state and timings."""
from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from .sampling import SamplingParams


class Status(enum.Enum):
    WAITING = "waiting"      # not scheduled yet, or preempted (its cache is gone: recompute)
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class Sequence:
    request_id: str
    index: int                               # choice index among the request's n
    prompt_token_ids: list[int]
    params: SamplingParams
    arrival: float = field(default_factory=time.perf_counter)
    output_token_ids: list[int] = field(default_factory=list)
    status: Status = Status.WAITING
    block_table: list[int] = field(default_factory=list)
    num_computed: int = 0                    # tokens whose k/v are in the cache
    waits_for: "Sequence | None" = None      # n > 1: choices after the first reuse its prompt
    prompt_logprobs_done: bool = False
    finish_reason: str | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None
    inter_token: list[float] = field(default_factory=list)
    sampling: object = None                  # SequenceSamplingState
    stop: object = None                      # StopChecker
    pending_prompt_logprobs: list = field(default_factory=list)
    # Prefix caching (see BlockManager.register_computed): the chained hashes of the
    # sequence's full blocks, which depend only on its tokens; how many leading blocks of the
    # current block_table were looked at, and those left to retry (both reset whenever the
    # table is allocated anew).
    block_hashes: list[int] = field(default_factory=list)
    blocks_checked: int = 0
    blocks_pending: list[int] = field(default_factory=list)

    def __post_init__(self):
        # prompt + output kept as one list, so that a step reads a sequence's new tokens
        # without copying its whole context
        self._tokens = self.prompt_token_ids + self.output_token_ids

    def append_token(self, token: int) -> None:
        self.output_token_ids.append(token)
        self._tokens.append(token)

    @property
    def all_token_ids(self) -> list[int]:
        """prompt + output tokens: the sequence's own list, not a copy (do not modify it)."""
        return self._tokens

    @property
    def num_tokens(self) -> int:
        return len(self._tokens)

    @property
    def num_uncomputed(self) -> int:
        return self.num_tokens - self.num_computed

    @property
    def in_prefill(self) -> bool:
        return self.num_computed < len(self.prompt_token_ids)
