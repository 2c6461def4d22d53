#!/usr/bin/env python3
"""Writes the SentencePiece tokenizer fixtures of drpo-models' tests (models/tests/spm.rs): a tiny
Llama-style SentencePiece model (BPE, byte fallback, a `▁` dummy prefix, digits split), trained
here by the `sentencepiece` library on a fixed text, and the ids of awkward strings from two
outside references:

- the `sentencepiece` library itself (what Llama 2 and Mistral were trained with, and what
  llama.cpp follows for GGUF `llama` vocabularies), against the tokenizer our crate builds from
  GGUF metadata; the fixture holds the vocabulary as a GGUF would (pieces, scores, token types);
- `transformers`' LlamaTokenizer, which converts the model into the tokenizer.json a Hugging Face
  directory ships (written to spm-tiny/), against our loader of such directories.

    python3 -m venv .cache/ref-venv
    .cache/ref-venv/bin/pip install transformers sentencepiece protobuf
    .cache/ref-venv/bin/python models/scripts/spm_reference.py
"""

import json
import os
import shutil
import tempfile

import sentencepiece as spm
from transformers import AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "models/tests/fixtures")

CORPUS = """The quick brown fox jumps over the lazy dog. Tokenizers split text into pieces.
A sentence piece model keeps spaces as a marker and falls back to bytes for rare characters.
Numbers like 12345 and 3.14 appear, as do names: Alice, Bob, Carol. Hello world! hello again.
Les élèves étudient à l'école. Der Bär läuft über die Straße.
def main():
    return 42
""" * 20

AWKWARD = [
    "Hello world",
    "hello again, Alice!",
    " leading space",
    "   three leading spaces",
    "runs    of     spaces",
    "trailing  ",
    "new\nlines\n\nand\ttabs",
    "Numbers 2024 and 3.14159",
    "Ærøskøbing über Straße",
    "emoji 😀🎉 need bytes",
    "中文 日本語",
    "def main():\n    return 42",
    "",
    " ",
    "\n",
]

# llama.cpp's token types: normal, unknown, control, byte.
NORMAL, UNKNOWN, CONTROL, BYTE = 1, 2, 3, 6


def main():
    work = tempfile.mkdtemp(prefix="drpo-spm-")
    corpus = os.path.join(work, "corpus.txt")
    with open(corpus, "w") as f:
        f.write(CORPUS)
    prefix = os.path.join(work, "tiny")
    spm.SentencePieceTrainer.train(
        input=corpus, model_prefix=prefix, vocab_size=400, model_type="bpe", byte_fallback=True,
        character_coverage=1.0, split_digits=True, allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False, normalization_rule_name="identity", add_dummy_prefix=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=prefix + ".model")

    hf_dir = os.path.join(work, "hf")
    os.makedirs(hf_dir)
    shutil.copy(prefix + ".model", os.path.join(hf_dir, "tokenizer.model"))
    with open(os.path.join(hf_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
                   "unk_token": "<unk>", "add_bos_token": True, "legacy": False}, f)
    hf = AutoTokenizer.from_pretrained(hf_dir)
    out_dir = os.path.join(OUT, "spm-tiny")
    shutil.rmtree(out_dir, ignore_errors=True)
    hf.save_pretrained(out_dir)
    for name in os.listdir(out_dir):
        if name not in ("tokenizer.json", "tokenizer_config.json"):
            os.remove(os.path.join(out_dir, name))

    def kind(i):
        if sp.is_unknown(i):
            return UNKNOWN
        if sp.is_control(i):
            return CONTROL
        if sp.is_byte(i):
            return BYTE
        return NORMAL

    n = sp.get_piece_size()
    cases = []
    for text in AWKWARD:
        ids = [sp.bos_id()] + sp.encode(text)
        hf_ids = hf.encode(text)
        cases.append({
            "text": text,
            "ids": ids,
            "decoded": sp.decode(ids),
            "hf_ids": hf_ids,
            "hf_decoded": hf.decode(hf_ids, skip_special_tokens=True),
        })
    fixture = {
        "vocab": {
            "tokens": [sp.id_to_piece(i) for i in range(n)],
            "scores": [sp.get_score(i) for i in range(n)],
            "types": [kind(i) for i in range(n)],
            "bos": sp.bos_id(),
            "eos": sp.eos_id(),
            "unk": sp.unk_id(),
        },
        "cases": cases,
    }
    path = os.path.join(OUT, "spm-tiny.json")
    with open(path, "w") as f:
        json.dump(fixture, f, indent=1, ensure_ascii=False)
        f.write("\n")
    shutil.rmtree(work)
    print(f"wrote {path} ({os.path.getsize(path)} bytes) and {out_dir}")
    for c in cases:
        if c["ids"] != c["hf_ids"]:
            print(f"transformers and sentencepiece differ on {c['text']!r}")


if __name__ == "__main__":
    main()
