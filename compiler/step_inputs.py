"""What one forward step consumes besides weights: the step's batch layout.

Every executor (reference interpreter, generated plans) takes the same
`StepInputs`, so the engine drives them all alike. A step holds the new tokens
of B sequences concatenated ([T] in total); sequence b owns rows
`query_start[b]:query_start[b+1]`, has `context_lens[b]` tokens in its KV cache
once this step's tokens are written, and keeps them in the blocks listed in
`block_tables[b]`. `slot_mapping[t]` is the flat cache slot
(block * block_size + offset) where token t's k/v go.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def int64_tensor(values) -> torch.Tensor:
    """A CPU int64 tensor from a list of ints, via numpy: half of torch.tensor's cost, which
    matters on a GPU's decode path (the host lays out every step while the GPU waits)."""
    return torch.from_numpy(np.array(values, dtype=np.int64).reshape(-1))


def to_device(values, device, dtype=torch.int64) -> torch.Tensor:
    """A small host list (or CPU tensor) as a tensor on `device`. To a GPU through pinned
    memory with a copy that does not wait: torch's copy from pageable memory synchronizes
    the stream, which would make the engine wait for the step it has just launched
    (overlapped decoding; the pinned block is not reused before the copy has run)."""
    t = values if isinstance(values, torch.Tensor) else torch.tensor(values, dtype=dtype)
    device = torch.device(device)
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def padded_table(tables: list[list[int]]) -> torch.Tensor:
    """[B, max blocks] int64, each row padded with 0 (a third of torch.tensor's cost on
    nested lists: 48 vs 129 us for 32 sequences of 40 blocks on the 2-core CI machine)."""
    width = max((len(t) for t in tables), default=0)
    if all(len(t) == width for t in tables):
        return torch.from_numpy(np.array(tables, dtype=np.int64).reshape(len(tables), width))
    out = np.zeros((len(tables), width), dtype=np.int64)
    for row, t in zip(out, tables):
        row[:len(t)] = t
    return torch.from_numpy(out)


@dataclass
class StepInputs:
    token_ids: torch.Tensor       # [T] int64
    positions: torch.Tensor       # [T] int64
    query_start: list[int]        # [B + 1] row offsets of each sequence in the step
    context_lens: list[int]       # [B] cached tokens per sequence after this step
    block_tables: list[list[int]]  # [B][blocks] cache blocks of each sequence
    slot_mapping: torch.Tensor    # [T] int64 flat cache slot of each new token
    block_size: int
    # [R] int64 rows of the step whose logits are wanted (graphs with the
    # lm_head_last_token pass); None means every row.
    logit_rows: torch.Tensor | None = None
    block_table_tensor: torch.Tensor | None = None   # [B, max_blocks] int64, padded with 0

    @property
    def num_tokens(self) -> int:
        return int(self.token_ids.shape[0])

    @property
    def num_seqs(self) -> int:
        return len(self.context_lens)

    @staticmethod
    def for_sequences(seqs: list[tuple[list[int], int, list[int]]], block_size: int,
                      logits: str = "last") -> "StepInputs":
        """Build a step from (new_token_ids, tokens_already_cached, block_table) per sequence.

        logits="last" asks for each sequence's last row (generation), "all" for every row
        (scoring a prompt)."""
        tokens, positions, slots, starts, ctx, tables = [], [], [], [0], [], []
        for new_ids, cached, table in seqs:
            n = len(new_ids)
            tokens += list(new_ids)
            pos = list(range(cached, cached + n))
            positions += pos
            slots += [table[p // block_size] * block_size + p % block_size for p in pos]
            starts.append(starts[-1] + n)
            ctx.append(cached + n)
            tables.append(list(table))
        rows = list(range(starts[-1])) if logits == "all" else [s - 1 for s in starts[1:]]
        return StepInputs(
            token_ids=int64_tensor(tokens), positions=int64_tensor(positions),
            query_start=starts, context_lens=ctx, block_tables=tables,
            slot_mapping=int64_tensor(slots), block_size=block_size,
            logit_rows=int64_tensor(rows), block_table_tensor=padded_table(tables))
