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

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_uncomputed(self) -> int:
        return self.num_tokens - self.num_computed

    @property
    def in_prefill(self) -> bool:
        return self.num_computed < len(self.prompt_token_ids)
