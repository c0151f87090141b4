"""rustinfer: a compiler-style LLM inference runtime.

The code lives in four folders installed as subpackages:
`rustinfer.compiler` (spec -> IR -> passes -> plan), `rustinfer.runtime`
(weights, tokenizer, generation), `rustinfer.kernels` (op implementations) and
`rustinfer.server` (the HTTP side). Model families live in `rustinfer.specs`
as YAML files.
"""

__version__ = "0.1.0"
