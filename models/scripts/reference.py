#!/usr/bin/env python3
"""Writes the reference fixtures of drpo-models' tests, from an implementation independent of
ours: `transformers` + `torch` (which dequantize and run the same GGUF file) and the `gguf`
package (ggml's reference block decoders, in numpy).

    python3 -m venv .cache/venv-ref
    .cache/venv-ref/bin/pip install torch transformers gguf accelerate
    scripts/fetch-smollm2.sh
    .cache/venv-ref/bin/python models/scripts/reference.py [GGUF] [OUT_DIR]

Writes into models/tests/fixtures/ (small JSON files, committed):
- smollm2-logits.json: for three prompts, the prompt's token ids, the top-5 next-token ids, the
  last-position logits of the top 64 tokens and of every 97th token, and 32 greedy tokens;
- smollm2-tokenizer.json: encode and decode of awkward strings with the GGUF's tokenizer;
- smollm2-chat.json: the GGUF's chat template rendered for a few conversations;
- dequant.json: raw blocks of each supported ggml type and their f32 values;
- random-logits.json: logits of two small random models (Mistral with grouped-query attention
  and a sliding window shorter than the sequence; Llama with tied embeddings), whose weights
  `drpo-model-tool random-model` writes (the Rust test writes the same ones with the same seed).
"""

import json
import shutil
import os

os.environ.setdefault("TQDM_DISABLE", "1")
import subprocess
import sys
import tempfile

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import quants

# torch and transformers' models are imported where they are used, so that the numpy-only parts
# (dequant_fixture, `write`) serve models/scripts/qwen2_reference.py without torch.

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GGUF = sys.argv[1] if len(sys.argv) > 1 else os.environ.get(
    "DRPO_SMOLLM2", os.path.join(ROOT, ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
OUT = sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "models/tests/fixtures")

PROMPTS = [
    {"chat": [{"role": "user", "content": "What is the capital of France?"}]},
    {"raw": "The quick brown fox"},
    {"raw": "def fibonacci(n):\n    "},
]

AWKWARD = [
    "Hello, world!",
    "1234567890 3.14159 -42 1e10",
    "emoji 😀🎉👍🏽 and 🇫🇷",
    "accents: àéîõü ñ ç ß Ærøskøbing",
    "runs    of     spaces",
    "new\nlines\n\n\nand\ttabs\t\t",
    "   leading and trailing   ",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>",
    "中文字符 日本語 한국어",
    "don't can't I'm we'll they'd",
    "CamelCaseIdentifier snake_case_name kebab-case",
    "",
    " ",
    "\n",
    "a" * 40,
    "math: ∑ x² ≤ ∞, √2 ≈ 1.414",
    "URL https://example.invalid/path?q=1&r=2#frag",
]

CHATS = [
    [{"role": "user", "content": "Hello!"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another one?"},
    ],
]


def write(name, value):
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, name)
    with open(path, "w") as f:
        json.dump(value, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


def logits_fixture(tok, model):
    import torch
    cases = []
    for prompt in PROMPTS:
        if "chat" in prompt:
            text = tok.apply_chat_template(prompt["chat"], tokenize=False, add_generation_prompt=True)
        else:
            text = prompt["raw"]
        ids = tok.encode(text, add_special_tokens=True)
        with torch.no_grad():
            out = model(torch.tensor([ids]), use_cache=True)
            last = out.logits[0, -1].float()
            past = out.past_key_values
            greedy = []
            nxt = int(last.argmax())
            for _ in range(32):
                greedy.append(nxt)
                step = model(torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
                past = step.past_key_values
                nxt = int(step.logits[0, -1].argmax())
        top = torch.topk(last, 64).indices.tolist()
        sample = sorted(set(top) | set(range(0, last.shape[0], 97)))
        cases.append({
            "prompt": prompt,
            "text": text,
            "ids": ids,
            "top5": top[:5],
            "logits": {str(i): round(float(last[i]), 5) for i in sample},
            "greedy": greedy,
            "greedy_text": tok.decode(greedy),
        })
    write("smollm2-logits.json", {"gguf": os.path.basename(GGUF), "cases": cases})


def tokenizer_fixture(tok):
    cases = []
    for text in AWKWARD:
        ids = tok.encode(text, add_special_tokens=True)
        cases.append({
            "text": text,
            "ids": ids,
            "decoded": tok.decode(ids, skip_special_tokens=False),
            "decoded_skip_special": tok.decode(ids, skip_special_tokens=True),
        })
    write("smollm2-tokenizer.json", {"gguf": os.path.basename(GGUF), "cases": cases})


def chat_fixture(tok):
    cases = []
    for messages in CHATS:
        for add in (False, True):
            cases.append({
                "messages": messages,
                "add_generation_prompt": add,
                "rendered": tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add),
            })
    write("smollm2-chat.json", {"gguf": os.path.basename(GGUF), "cases": cases})


def dequant_fixture():
    """Two blocks per type: quantized by gguf-py where it can, random bytes with sane f16
    scales otherwise (K-quants), decoded by gguf-py's reference decoders."""
    rng = np.random.default_rng(1234)
    cases = []
    # New types go last, so that the cases before them keep their random draws.
    for name in ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q6_K",
                 "Q5_0", "Q5_1", "Q5_K"]:
        qt = Q[name]
        block, size = quants.GGML_QUANT_SIZES[qt]
        n = 2 * block if block > 1 else 8
        if name in ("Q4_K", "Q5_K", "Q6_K"):
            raw = rng.integers(0, 256, size=(n // block) * size, dtype=np.uint8)
            for b in range(n // block):
                base = b * size
                scales = rng.uniform(0.001, 0.05, size=2).astype(np.float16).view(np.uint8)
                if name in ("Q4_K", "Q5_K"):  # d, dmin at the start
                    raw[base:base + 4] = scales
                else:  # d at the end
                    raw[base + size - 2:base + size] = scales[:2]
            raw = raw.reshape(1, -1)
        else:
            x = rng.standard_normal((1, n)).astype(np.float32)
            raw = quants.quantize(x, qt)
            raw = np.ascontiguousarray(raw).view(np.uint8).reshape(1, -1)
        values = quants.dequantize(raw, qt).reshape(-1).astype(np.float32)
        cases.append({
            "type": name,
            "bytes": raw.tobytes().hex(),
            "values": [float(v) for v in values],
        })
    write("dequant.json", {"cases": cases})


RANDOM_MODELS = [("tiny-mistral", 5), ("tiny-llama", 6)]
RANDOM_IDS = [(i * 37) % 500 + 3 for i in range(19)]


def random_fixture():
    import torch
    from transformers import AutoModelForCausalLM
    cases = []
    for preset, seed in RANDOM_MODELS:
        out = tempfile.mkdtemp(prefix=f"drpo-ref-{preset}-")
        subprocess.run(
            ["cargo", "run", "-q", "-p", "drpo-models", "--bin", "drpo-model-tool", "--",
             "random-model", "--config", preset, "--out", out, "--seed", str(seed)],
            check=True, cwd=ROOT)
        model = AutoModelForCausalLM.from_pretrained(
            out, dtype=torch.float32, attn_implementation="eager")
        model.eval()
        with torch.no_grad():
            logits = model(torch.tensor([RANDOM_IDS])).logits[0].float()
        cases.append({
            "preset": preset,
            "seed": seed,
            "ids": RANDOM_IDS,
            # every position, the first 32 vocabulary entries; the last position, all of them
            "first32": [[round(float(x), 6) for x in row[:32]] for row in logits],
            "last": [round(float(x), 6) for x in logits[-1]],
        })
        shutil.rmtree(out)
    write("random-logits.json", {"cases": cases})


def main():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    torch.manual_seed(0)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    folder, name = os.path.split(os.path.abspath(GGUF))
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model.eval()
    dequant_fixture()
    random_fixture()
    tokenizer_fixture(tok)
    chat_fixture(tok)
    logits_fixture(tok, model)


if __name__ == "__main__":
    main()
