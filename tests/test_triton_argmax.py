"""The chunked argmax (greedy sampling on a GPU) == torch.argmax, in Triton's interpreter.

Ties must go to the lowest id whichever chunks hold them; the real shapes run on a GPU
in tests/test_cuda_kernels.py."""
from __future__ import annotations

import pytest
import torch

from rustinfer.kernels.triton.argmax import BLOCK, argmax_rows


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("vocab", [300, BLOCK, BLOCK + 1, 2 * BLOCK + 77])
def test_argmax_matches_torch(dtype, vocab):
    g = torch.Generator().manual_seed(vocab)
    x = torch.randn(3, vocab, generator=g).to(dtype)
    assert torch.equal(argmax_rows(x), x.argmax(-1))


def test_ties_across_chunks_and_rows_of_minus_inf():
    v = 3 * BLOCK + 5
    x = torch.randn(4, v, generator=torch.Generator().manual_seed(1))
    x[0, [v - 1, BLOCK + 3, 2 * BLOCK]] = 50.0          # lowest tied id is in chunk 1
    x[1, [7, 8, BLOCK - 1]] = 50.0                       # inside the first chunk
    x[2] = float("-inf")                                 # every token banned: id 0, as torch
    x[3, :2 * BLOCK] = float("-inf")                     # only the last chunks are finite
    want = x.argmax(-1)
    assert want.tolist()[:3] == [BLOCK + 3, 7, 0]
    assert torch.equal(argmax_rows(x), want)


def test_rows_of_a_wider_buffer_and_bad_layouts():
    wide = torch.randn(2, 1000, generator=torch.Generator().manual_seed(2))
    view = wide[:, :900]                                 # row stride 1000
    assert torch.equal(argmax_rows(view), view.argmax(-1))
    with pytest.raises(ValueError, match="contiguous rows"):
        argmax_rows(wide.t())
