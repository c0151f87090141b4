"""Shared fixtures.

TRITON_INTERPRET must be set before any @triton.jit decorator runs, so it is
set here, before project modules are imported.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SHARED_MODELS = REPO.parent / "shared" / "models"


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The default model's GGUF file, fetched once into $RUSTINFER_CACHE."""
    from rustinfer.runtime.model_resolver import resolve_model

    return resolve_model(None)


@pytest.fixture(scope="session")
def smol_tokenizer(smollm2_gguf):
    """The default model's tokenizer (JSON mode's masks are checked against its vocabulary)."""
    from rustinfer.runtime.tokenizer import Tokenizer

    return Tokenizer.load(smollm2_gguf)


@pytest.fixture(scope="session")
def llama32_1b_dir() -> Path:
    """config.json + tokenizer of Llama-3.2-1B-Instruct (no weights)."""
    for candidate in (REPO / "bench" / "models" / "llama-3.2-1b-instruct",
                      SHARED_MODELS / "llama-3.2-1b-instruct"):
        if (candidate / "config.json").exists():
            return candidate
    pytest.fail("Llama-3.2-1B config not found under bench/models or ../shared/models")


@pytest.fixture(scope="session")
def llama_dir(llama32_1b_dir) -> Path:
    """A folder with Llama 3.2 1B's tokenizer files (bench/models holds only its config)."""
    for path in (llama32_1b_dir, SHARED_MODELS / "llama-3.2-1b-instruct"):
        if (path / "tokenizer.json").is_file():
            return path
    pytest.skip("no Llama 3.2 tokenizer.json available")
