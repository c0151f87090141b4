"""rustinfer's GGUF tokenizers against llama.cpp's own tokenizer test vectors.

    .venv/bin/python scripts/check_gguf_tokenizers.py [--sdist PATH]

llama.cpp ships vocabulary-only GGUFs of real models (models/ggml-vocab-*.gguf:
Llama 2's SentencePiece, Phi-3's, Llama 3's, Qwen2's, GPT-2's, ...) with texts
(*.gguf.inp) and the ids the model's original Hugging Face tokenizer gives them
(*.gguf.out), which llama.cpp's test-tokenizer-0 must reproduce. They are not
committed here (third-party data, ~30 MB): this script fetches the
llama-cpp-python source package by name with pip, once, into
$RUSTINFER_CACHE/tokenizer-vectors, and prints one line per vocabulary. Exit
status 1 when a vocabulary rustinfer loads gives different ids.

Vocabularies rustinfer does not rebuild (BERT, Gemma 4, pre-tokenizers it does not
know) are listed with the reason. Not part of the test suite: it needs the network
once, and tests/test_gguf_spm.py and tests/test_tokenizer.py check the same code
against oracles that need none.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
from pathlib import Path

from rustinfer.runtime.model_resolver import cache_dir
from rustinfer.runtime.tokenizer import Tokenizer

SDIST = "llama-cpp-python==0.3.36"
SEPARATOR = "\n__ggml_vocab_test__\n"


def vectors_dir(sdist: Path | None) -> Path:
    """The folder holding ggml-vocab-*.gguf(.inp/.out), extracted once."""
    root = cache_dir() / "tokenizer-vectors"
    done = root / ".extracted"
    if done.exists() and sdist is None:
        return root
    root.mkdir(parents=True, exist_ok=True)
    if sdist is None:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", SDIST, "--no-deps",
                        "--no-binary", ":all:", "-d", str(root)], check=True)
        sdist = next(root.glob("llama_cpp_python-*.tar.gz"))
    with tarfile.open(sdist) as tar:
        members = {Path(m.name).name: m for m in tar.getmembers()
                   if "/models/ggml-vocab-" in m.name and m.isfile()}
        for name, member in members.items():
            # only the vocabularies that come with test vectors
            if f"{name.removesuffix('.inp').removesuffix('.out')}.inp" in members:
                (root / name).write_bytes(tar.extractfile(member).read())
    if sdist.parent == root:          # ours: the extracted files are all we keep
        sdist.unlink()
    done.touch()
    return root


def check(gguf: Path) -> tuple[str, bool | None]:
    """(one report line, True/False: ids match or not, None: not a vocabulary we load)."""
    name = gguf.name.removeprefix("ggml-vocab-").removesuffix(".gguf")
    texts = gguf.with_suffix(".gguf.inp").read_text(encoding="utf-8").split(SEPARATOR)
    wanted = gguf.with_suffix(".gguf.out").read_text(encoding="utf-8").split("\n")
    try:
        tok = Tokenizer.from_gguf(gguf)
    except ValueError as e:
        return f"{name:16s} not rebuilt: {str(e).split(': ', 1)[-1][:90]}", None
    # test-tokenizer-0 encodes without BOS/EOS and without parsing special tokens; none of
    # the texts contains one, so rustinfer's parsing of them does not matter here
    diffs = [(t, w, tok.encode(t, add_special_tokens=False)) for t, w in zip(texts, wanted)]
    diffs = [(t, w, g) for t, w, g in diffs if [int(x) for x in w.split()] != g]
    line = f"{name:16s} {len(texts) - len(diffs)}/{len(texts)} texts give llama.cpp's ids"
    if diffs:
        t, w, g = diffs[0]
        line += f"; first difference {t[:40]!r}: want {w[:60]}, got {g[:12]}"
    return line, not diffs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sdist", type=Path, help="a llama-cpp-python source .tar.gz already on disk")
    args = ap.parse_args()
    folder = vectors_dir(args.sdist)
    results = [check(g) for g in sorted(folder.glob("ggml-vocab-*.gguf"))
               if g.with_suffix(".gguf.inp").exists()]
    for line, _ in results:
        print(line)
    return 1 if any(ok is False for _, ok in results) else 0


if __name__ == "__main__":
    sys.exit(main())
