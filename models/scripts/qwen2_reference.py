#!/usr/bin/env python3
"""Writes the Qwen2 fixtures of drpo-models' tests (models/tests/qwen2.rs), from an implementation
independent of ours, without torch (not installable here without gigabytes of CUDA libraries):

- the forward pass is a numpy transcription of `transformers`' Qwen2 (modeling_qwen2.py:
  RMSNorm, biased q/k/v projections, rotate-half RoPE, grouped-query attention, SwiGLU MLP,
  untied head) in float64, with the sliding-window rule of its Qwen2Config;
- GGUF weights are decoded by the `gguf` package's numpy dequantizers (ggml's reference ones);
  its `qwen2` tensors are in Hugging Face's row order (llama.cpp does not permute them);
- the tokenizer and the chat template are `transformers`' own, read from the GGUF file.

    scripts/fetch-qwen.sh 0.5b
    python3 -m venv .cache/qwen-ref-venv   # transformers, gguf, numpy, jinja2; no torch
    .cache/qwen-ref-venv/bin/python models/scripts/qwen2_reference.py [GGUF] [OUT_DIR]

Writes into models/tests/fixtures/ (small JSON files, committed):
- qwen2-random-logits.json: logits of the `tiny-qwen2` random model, whose weights
  `drpo-model-tool random-model` writes (the Rust test writes the same ones with the same seed);
- qwen2.5-0.5b-logits.json: for two prompts, the prompt's token ids, the top-5 next-token ids,
  the last-position logits of the top 64 tokens and of every 97th token, and 32 greedy tokens;
- qwen2.5-0.5b-tokenizer.json: encode and decode of awkward strings with the GGUF's tokenizer;
- qwen2.5-0.5b-chat.json: the GGUF's chat template rendered for a few conversations;
and, through reference.py's dequant_fixture, dequant.json (Q5_0, Q5_1 and Q5_K included).
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

os.environ.setdefault("TQDM_DISABLE", "1")
import numpy as np
from gguf import GGUFReader
from gguf import quants
from safetensors.numpy import load_file
from transformers import Qwen2Tokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference  # noqa: E402  (its `write`, fixture directory and dequant_fixture)

ROOT = reference.ROOT
GGUF = sys.argv[1] if len(sys.argv) > 1 else os.environ.get(
    "DRPO_QWEN_05B", os.path.join(ROOT, ".cache/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"))
if len(sys.argv) > 2:
    reference.OUT = sys.argv[2]

PROMPTS = [
    {"chat": [{"role": "user", "content": "Write a Python function that reverses a string."}]},
    {"raw": "def fibonacci(n):\n    "},
]

AWKWARD = [
    "12345",
    "3.14159",
    "1234567890 -42 1e10 0x1F",
    "中文字符 日本語 한국어",
    "emoji 😀🎉👍🏽 and 🇫🇷",
    "runs    of     spaces\tand\t\ttabs\n\n\nnew lines  ",
    "   leading and trailing   ",
    "def add(a, b):\n    return a + b  # sum\n",
    "fn main() { println!(\"{}\", x[0]); }",
    "don't can't I'm we'll THEY'D",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>",
    "accents: àéîõü ñ ç ß",
    "",
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


class Qwen2:
    """transformers' Qwen2ForCausalLM in numpy (float64), with a key/value cache."""

    def __init__(self, config, weight):
        self.c = config
        self.w = weight
        hd = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
        self.hd = hd
        inv_freq = 1.0 / (config["rope_theta"] ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
        self.inv_freq = inv_freq
        # Qwen2Config: `sliding_window if use_sliding_window else None`.
        use = config.get("use_sliding_window", False)
        self.window = config.get("sliding_window") if use else None
        assert self.window is None, "the reference covers full attention only"
        self.reset()

    def reset(self):
        self.cache = [([], []) for _ in range(self.c["num_hidden_layers"])]
        self.pos = 0

    def rms(self, x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + self.c["rms_norm_eps"]) * w

    def rope(self, x, pos):  # x: [T, heads, hd]
        freqs = pos[:, None] * self.inv_freq[None, :]
        emb = np.concatenate([freqs, freqs], -1)
        cos, sin = np.cos(emb)[:, None, :], np.sin(emb)[:, None, :]
        half = self.hd // 2
        rotated = np.concatenate([-x[..., half:], x[..., :half]], -1)
        return x * cos + rotated * sin

    def forward(self, ids, all_logits=False):
        c, w, hd = self.c, self.w, self.hd
        h, kv = c["num_attention_heads"], c["num_key_value_heads"]
        t = len(ids)
        pos = np.arange(self.pos, self.pos + t, dtype=np.float64)
        x = w("model.embed_tokens.weight")[ids]
        for layer in range(c["num_hidden_layers"]):
            p = f"model.layers.{layer}"
            y = self.rms(x, w(f"{p}.input_layernorm.weight"))
            proj = lambda n: y @ w(f"{p}.self_attn.{n}_proj.weight").T + w(f"{p}.self_attn.{n}_proj.bias")
            q = self.rope(proj("q").reshape(t, h, hd), pos)
            k = self.rope(proj("k").reshape(t, kv, hd), pos)
            v = proj("v").reshape(t, kv, hd)
            ks, vs = self.cache[layer]
            ks.append(k)
            vs.append(v)
            k, v = np.concatenate(ks), np.concatenate(vs)  # [S, kv, hd]
            s = k.shape[0]
            group = h // kv
            k = np.repeat(k, group, axis=1)
            v = np.repeat(v, group, axis=1)
            scores = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd)
            causal = np.arange(s)[None, :] > (self.pos + np.arange(t))[:, None]
            scores = np.where(causal[None], -np.inf, scores)
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            probs = scores / scores.sum(-1, keepdims=True)
            attended = np.einsum("hts,shd->thd", probs, v).reshape(t, h * hd)
            x = x + attended @ w(f"{p}.self_attn.o_proj.weight").T
            y = self.rms(x, w(f"{p}.post_attention_layernorm.weight"))
            gate = y @ w(f"{p}.mlp.gate_proj.weight").T
            up = y @ w(f"{p}.mlp.up_proj.weight").T
            x = x + (gate / (1.0 + np.exp(-gate)) * up) @ w(f"{p}.mlp.down_proj.weight").T
        self.pos += t
        x = self.rms(x if all_logits else x[-1:], w("model.norm.weight"))
        head = w("model.embed_tokens.weight" if c["tie_word_embeddings"] else "lm_head.weight")
        return x @ head.T


def random_fixture():
    preset, seed = "tiny-qwen2", 7
    ids = [(i * 37) % 500 + 3 for i in range(19)]
    out = tempfile.mkdtemp(prefix="drpo-ref-tiny-qwen2-")
    subprocess.run(
        ["cargo", "run", "-q", "-p", "drpo-models", "--bin", "drpo-model-tool", "--",
         "random-model", "--config", preset, "--out", out, "--seed", str(seed)],
        check=True, cwd=ROOT)
    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    tensors = {k: v.astype(np.float64) for k, v in load_file(os.path.join(out, "model.safetensors")).items()}
    logits = Qwen2(config, tensors.__getitem__).forward(ids, all_logits=True)
    shutil.rmtree(out)
    reference.write("qwen2-random-logits.json", {"cases": [{
        "preset": preset,
        "seed": seed,
        "ids": ids,
        # every position, the first 32 vocabulary entries; the last position, all of them
        "first32": [[round(float(x), 6) for x in row[:32]] for row in logits],
        "last": [round(float(x), 6) for x in logits[-1]],
    }]})


# llama.cpp's tensor names for transformers' ones.
GGUF_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_model(path):
    reader = GGUFReader(path)
    field = lambda k: reader.fields[k].contents()
    config = {
        "hidden_size": field("qwen2.embedding_length"),
        "num_hidden_layers": field("qwen2.block_count"),
        "num_attention_heads": field("qwen2.attention.head_count"),
        "num_key_value_heads": field("qwen2.attention.head_count_kv"),
        "rope_theta": field("qwen2.rope.freq_base"),
        "rms_norm_eps": field("qwen2.attention.layer_norm_rms_epsilon"),
        "tie_word_embeddings": not any(t.name == "output.weight" for t in reader.tensors),
    }
    tensors = {t.name: t for t in reader.tensors}
    cache = {}

    def weight(name):
        if name not in cache:
            if name.startswith("model.layers."):
                _, _, layer, rest = name.split(".", 3)
                gguf_name = f"blk.{layer}.{GGUF_NAMES[rest]}"
            else:
                gguf_name = GGUF_NAMES[name]
            t = tensors[gguf_name]
            values = quants.dequantize(t.data, t.tensor_type)
            shape = [int(d) for d in reversed(t.shape)]
            # float32 storage keeps the two 151936×896 tables at half a GiB each.
            cache[name] = values.reshape(shape).astype(np.float32)
        return cache[name]

    return config, weight


def logits_fixture(tok):
    config, weight = gguf_model(GGUF)
    model = Qwen2(config, weight)
    cases = []
    for prompt in PROMPTS:
        if "chat" in prompt:
            text = tok.apply_chat_template(prompt["chat"], tokenize=False, add_generation_prompt=True)
        else:
            text = prompt["raw"]
        ids = tok.encode(text, add_special_tokens=True)
        model.reset()
        last = model.forward(ids)[0]
        greedy = []
        nxt = int(last.argmax())
        for _ in range(32):
            greedy.append(nxt)
            nxt = int(model.forward([nxt])[0].argmax())
        order = np.argsort(-last, kind="stable")
        top = [int(i) for i in order[:64]]
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
        print(f"{text!r} -> {tok.decode(greedy)!r}")
    reference.write("qwen2.5-0.5b-logits.json", {"gguf": os.path.basename(GGUF), "cases": cases})


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
    reference.write("qwen2.5-0.5b-tokenizer.json", {"gguf": os.path.basename(GGUF), "cases": cases})


def chat_fixture(tok):
    cases = []
    for messages in CHATS:
        for add in (False, True):
            cases.append({
                "messages": messages,
                "add_generation_prompt": add,
                "rendered": tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add),
            })
    reference.write("qwen2.5-0.5b-chat.json", {"gguf": os.path.basename(GGUF), "cases": cases})


def without_torch():
    """Lets transformers' GGUF metadata reader import without torch: it names torch's types at
    import time (annotations, a dtype table) and uses torch only to load tensors, which the
    tokenizer never does. Called after transformers has decided, from the installed packages,
    that torch is absent."""
    if "torch" in sys.modules:
        return
    import importlib.machinery
    import types

    def placeholder(name):
        if name.startswith("__"):
            raise AttributeError(name)
        return type(name, (), {})

    stub = types.ModuleType("torch")
    stub.__spec__ = importlib.machinery.ModuleSpec("torch", None)
    stub.__getattr__ = placeholder
    sys.modules["torch"] = stub


def main():
    reference.dequant_fixture()
    random_fixture()
    without_torch()
    folder, name = os.path.split(os.path.abspath(GGUF))
    # Qwen2Tokenizer rather than AutoTokenizer: the latter reads the model config, which for a
    # qwen2 GGUF file needs torch.
    tok = Qwen2Tokenizer.from_pretrained(folder, gguf_file=name)
    tokenizer_fixture(tok)
    chat_fixture(tok)
    logits_fixture(tok)


if __name__ == "__main__":
    main()
