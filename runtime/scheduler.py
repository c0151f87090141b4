"""Continuous batching: which sequences run in the next step, and how many tokens each.

Each step has a token budget (max_num_batched_tokens) and a sequence cap
(max_num_seqs). Running sequences go first, in arrival order: a decoding
sequence takes one token, a sequence still in prefill takes the next chunk of
its prompt (chunked prefill), so prefill and decode share a step. Waiting
sequences then join FCFS while budget, seats and KV blocks last.

When the KV cache runs out, the most recently arrived running sequence is
preempted: its blocks are freed and it goes back to the front of the queue to
be recomputed later (its generated tokens are kept and re-fed as prompt).
Nothing is dropped and nothing crashes.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from .block_manager import BlockManager, NoFreeBlocks
from .sequence import Sequence, Status


@dataclass
class ScheduledSeq:
    seq: Sequence
    num_tokens: int          # tokens computed for it in this step (from seq.num_computed on)


class Scheduler:
    def __init__(self, blocks: BlockManager, max_num_seqs: int, max_num_batched_tokens: int):
        self.blocks = blocks
        self.max_num_seqs, self.max_tokens = max_num_seqs, max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preempted = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> list[ScheduledSeq]:
        budget = self.max_tokens
        batch: list[ScheduledSeq] = []
        # 1. Running sequences, oldest first; preempt the newest when blocks run out.
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = min(seq.num_uncomputed, budget)
            try:
                self.blocks.ensure_capacity(seq.block_table, seq.num_computed + n)
            except NoFreeBlocks:
                victim = self.running[-1]
                self._preempt(victim)
                if victim is seq:
                    break
                continue                                   # retry seq with the freed blocks
            batch.append(ScheduledSeq(seq, n))
            budget -= n
            i += 1
        # 2. Waiting sequences join, first come first served.
        while budget > 0 and self.can_admit():
            seq = self.waiting[0]
            # Prompt logprobs come from the logits of computed positions: a prefix the
            # cache holds would go unscored, so such a sequence computes its whole prompt.
            table, cached = self.blocks.allocate_prompt(seq.all_token_ids,
                                                        use_cache=not _scores_prompt(seq))
            seq.block_table, seq.num_computed = table, cached
            seq.blocks_checked = 0
            seq.blocks_pending.clear()
            n = min(seq.num_uncomputed, budget)
            self.waiting.popleft()
            seq.status = Status.RUNNING
            self.running.append(seq)
            batch.append(ScheduledSeq(seq, n))
            budget -= n
        return batch

    def can_admit(self) -> bool:
        """Whether the first waiting sequence can start now: a seat, blocks for its tokens,
        and (n > 1) the first choice's prompt computed, so that it is shared."""
        if not self.waiting or len(self.running) >= self.max_num_seqs:
            return False
        seq = self.waiting[0]
        if seq.waits_for is not None and seq.waits_for.in_prefill \
                and seq.waits_for.status != Status.FINISHED:
            return False
        return self.blocks.can_allocate(seq.num_tokens)

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.free(seq.block_table)
        seq.num_computed = 0
        if _scores_prompt(seq):
            seq.pending_prompt_logprobs.clear()   # rescored from the first token when it returns
        seq.status = Status.WAITING
        self.waiting.appendleft(seq)
        self.num_preempted += 1

    def finish(self, seq: Sequence) -> None:
        """Remove a finished or aborted sequence and free its blocks."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.blocks.free(seq.block_table)
        seq.status = Status.FINISHED


def _scores_prompt(seq: Sequence) -> bool:
    """Whether the sequence still has prompt logprobs to compute (echo / prompt_logprobs)."""
    return seq.params.prompt_logprobs is not None and not seq.prompt_logprobs_done
