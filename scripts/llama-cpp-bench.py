"""llama.cpp's side of scripts/bench-cpu-decoder: prefill and greedy batch-1 decode speed of
one GGUF file through llama-cpp-python, printed as one JSON line like drpo-model-tool bench's.

Usage: llama-cpp-bench.py MODEL.gguf PROMPT_TOKENS GEN_TOKENS THREADS
The prompt is PROMPT_TOKENS random token ids (seed 0), evaluated in one batch; decode then
takes GEN_TOKENS - 1 greedy steps of one token each, as drpo-model-tool's bench counts them.
"""

import json
import random
import sys
import time

from llama_cpp import Llama


def main() -> None:
    path, prompt_len, gen, threads = sys.argv[1], *map(int, sys.argv[2:5])
    model = Llama(
        model_path=path,
        n_ctx=prompt_len + gen + 16,
        n_batch=max(prompt_len, 8),
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )
    rng = random.Random(0)
    prompt = [rng.randrange(3, model.n_vocab()) for _ in range(prompt_len)]
    model.reset()
    started = time.perf_counter()
    model.eval(prompt)
    prefill_s = time.perf_counter() - started
    token = model.sample(temp=0.0)
    started = time.perf_counter()
    for _ in range(gen - 1):
        model.eval([token])
        token = model.sample(temp=0.0)
    decode_s = time.perf_counter() - started
    print(
        json.dumps(
            {
                "engine": "llama.cpp",
                "batch": 1,
                "prompt_len": prompt_len,
                "gen_tokens": gen,
                "prefill_tok_s": prompt_len / prefill_s,
                "decode_tok_s": (gen - 1) / decode_s,
            }
        )
    )


if __name__ == "__main__":
    main()
