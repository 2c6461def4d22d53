#!/usr/bin/env python3
"""Writes models/tests/fixtures/smollm2-llama-cpp.json: SmolLM2-135M-Instruct (the Q4_1 GGUF of
scripts/fetch-smollm2.sh) decoded greedily by llama.cpp (through llama-cpp-python), a second
reference beside the transformers one of reference.py, with an engine that reads the GGUF itself.

For each prompt of smollm2-logits.json: llama.cpp's token ids of the prompt text, then 32 greedy
tokens, and at each step the gap between the two highest logits. llama.cpp quantizes the
activations to 8 bits for its Q4_1 dot products, where our decoder multiplies them in f32, so a
step whose gap is small may rightly go the other way; the test compares up to such a step.

    python3 -m venv .cache/llama-server-venv
    .cache/llama-server-venv/bin/pip install llama-cpp-python numpy
    scripts/fetch-smollm2.sh
    .cache/llama-server-venv/bin/python models/scripts/llama_cpp_reference.py [GGUF]
"""

import json
import os
import sys

import llama_cpp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GGUF = sys.argv[1] if len(sys.argv) > 1 else os.environ.get(
    "DRPO_SMOLLM2", os.path.join(ROOT, ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
FIXTURES = os.path.join(ROOT, "models/tests/fixtures")
STEPS = 32
# Beside the prompts of smollm2-logits.json, raw ones whose greedy steps are mostly clear wins.
MORE = [
    "The capital of Germany is",
    "Once upon a time, there was a little",
    "1, 2, 3, 4, 5,",
    "Water boils at a temperature of",
]


def main():
    with open(os.path.join(FIXTURES, "smollm2-logits.json")) as f:
        prompts = [(c["prompt"], c["text"]) for c in json.load(f)["cases"]]
    prompts += [({"raw": text}, text) for text in MORE]
    # One thread and one sequence: llama.cpp's sums then do not depend on how work is split.
    llm = llama_cpp.Llama(model_path=GGUF, n_ctx=512, n_batch=512, n_threads=1,
                          logits_all=True, verbose=False, seed=0)
    cases = []
    for prompt, text in prompts:
        llm.reset()
        ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        llm.eval(ids)
        greedy, gaps = [], []
        for _ in range(STEPS):
            logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)
            top2 = np.argsort(-logits, kind="stable")[:2]
            greedy.append(int(top2[0]))
            gaps.append(round(float(logits[top2[0]] - logits[top2[1]]), 5))
            llm.eval([int(top2[0])])
        cases.append({
            "prompt": prompt,
            "text": text,
            "ids": [int(i) for i in ids],
            "greedy": greedy,
            "top2_gaps": gaps,
            "greedy_text": llm.detokenize(greedy).decode("utf-8", "replace"),
        })
    out = {
        "gguf": os.path.basename(GGUF),
        "llama_cpp_python": llama_cpp.__version__,
        "cases": cases,
    }
    path = os.path.join(FIXTURES, "smollm2-llama-cpp.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
