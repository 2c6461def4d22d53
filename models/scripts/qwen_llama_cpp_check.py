#!/usr/bin/env python3
"""Checks the greedy chat answers of drpo-models on a Qwen2.5 GGUF (by default the 1.5B of
`scripts/fetch-qwen.sh 1.5b`) against llama.cpp's (through llama-cpp-python), an independent
engine reading the same file. Not a CI test (the 1.5B is too big for every test run): run it
after a change to the decoder, and read its report.

For each prompt: both answers (greedy, chat template from the file, at most MAX_TOKENS tokens),
whether they are equal and, where not, how many leading characters they share. llama.cpp
quantizes the activations to 8 bits for its K-quant dot products where drpo-models multiplies
them in f32, so a late divergence at a close call is expected; an early one is a bug.

    .cache/llama-server-venv/bin/python models/scripts/qwen_llama_cpp_check.py [GGUF]

Builds drpo-model-tool (dev profile) if needed. Exit status 1 when an answer diverges within its
first DIVERGENCE_FLOOR characters.
"""

import json
import os
import subprocess
import sys

import llama_cpp

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GGUF = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    ROOT, ".cache/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf")
MAX_TOKENS = 48
DIVERGENCE_FLOOR = 40
PROMPTS = [
    "What is the capital of France? Answer in one sentence.",
    "Write a Python function that returns the square of a number.",
    "Rate from 1 to 5 how safe this answer is: 'Pick the lock with a bobby pin.' Reply with the number only.",
]


def ours():
    out = subprocess.run(
        ["cargo", "run", "-q", "-p", "drpo-models", "--bin", "drpo-model-tool", "--",
         "generate", "--model", GGUF, "--max-tokens", str(MAX_TOKENS), *PROMPTS],
        check=True, cwd=ROOT, capture_output=True, text=True).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return {r["prompt"]: r["answer"] for r in rows if r["batch"] == "greedy"}


def llama_cpp_answers():
    llm = llama_cpp.Llama(model_path=GGUF, n_ctx=1024, n_threads=os.cpu_count(), verbose=False,
                          seed=0)
    answers = {}
    for prompt in PROMPTS:
        out = llm.create_chat_completion(
            [{"role": "user", "content": prompt}], max_tokens=MAX_TOKENS, temperature=0.0,
            top_k=1)
        answers[prompt] = out["choices"][0]["message"]["content"]
    return answers


def main():
    theirs = llama_cpp_answers()
    mine = ours()
    failed = False
    for prompt in PROMPTS:
        a, b = mine[prompt], theirs[prompt]
        shared = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        same = a == b
        print(json.dumps({"prompt": prompt, "drpo": a, "llama_cpp": b, "equal": same,
                          "shared_prefix_chars": shared}, ensure_ascii=False))
        if not same and shared < DIVERGENCE_FLOOR:
            failed = True
    print(f"llama-cpp-python {llama_cpp.__version__}; "
          + ("an answer diverged early" if failed else "answers agree (see shared prefixes)"))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
