"""rustinfer.runtime: weights, tokenizer, sampling, executors and the `LLM` API."""
from .sampling import SamplingParams


def __getattr__(name):
    # Lazy: `from rustinfer.runtime import LLM` without importing torch-heavy code
    # for users who only need SamplingParams.
    if name in ("LLM", "RequestOutput"):
        from . import llm

        return getattr(llm, name)
    raise AttributeError(name)


__all__ = ["LLM", "RequestOutput", "SamplingParams"]
