#!/usr/bin/env python3
"""Reference speed of `transformers` on Mistral-7B shapes with random bf16 weights.

The side-by-side for `drpo-model-tool bench`: the same shapes (Mistral-7B-Instruct-v0.1's
config), the same prompt length and number of new tokens, greedy decoding with `generate` on
the same GPU. Prints one JSON object per batch size on stdout, in the tool's schema.

Prefill is timed as one forward pass over the prompts; decode as `generate`'s time minus that
prefill, over the tokens after the first.
"""
import argparse
import json
import sys
import time

import torch
import transformers
from transformers import MistralConfig, MistralForCausalLM


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", default="1,8,32")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--gen-tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--attn", default="sdpa", help="attention implementation (sdpa, eager)")
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for a dry run")
    parser.add_argument("--tiny", action="store_true", help="small shapes, for a dry run")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    config = MistralConfig(
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=32768,
        rope_theta=10000.0,
        sliding_window=4096,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    )
    if args.tiny:
        config.hidden_size, config.intermediate_size, config.num_hidden_layers = 128, 256, 2
        config.num_attention_heads, config.num_key_value_heads = 8, 2
        config.head_dim = 16
    config._attn_implementation = args.attn
    cuda = args.device.startswith("cuda")
    started = time.perf_counter()
    # Initialising on the GPU in bf16 takes seconds; on the CPU in f32 it would take minutes.
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(args.device):
        model = MistralForCausalLM(config)
    model.eval()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    load_s = time.perf_counter() - started
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, "
          f"model ready in {load_s:.1f} s", file=sys.stderr)

    for batch in [int(b) for b in args.batch.split(",")]:
        ids = torch.randint(3, config.vocab_size, (batch, args.prompt_len), device=args.device)
        mask = torch.ones_like(ids)
        generate = dict(
            attention_mask=mask,
            do_sample=False,
            pad_token_id=0,
            max_new_tokens=args.gen_tokens,
            min_new_tokens=args.gen_tokens,
        )
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        with torch.no_grad():
            warm = time.perf_counter()
            model.generate(ids, **{**generate, "max_new_tokens": 8, "min_new_tokens": 8})
            sync()
            warm_s = time.perf_counter() - warm

            t0 = time.perf_counter()
            model(ids, attention_mask=mask, use_cache=True)
            sync()
            prefill_s = time.perf_counter() - t0

            t0 = time.perf_counter()
            out = model.generate(ids, **generate)
            sync()
            total_s = time.perf_counter() - t0
        new = out.shape[1] - args.prompt_len
        decode_s = max(total_s - prefill_s, 1e-9)
        result = {
            "kind": "bench",
            "impl": "transformers",
            "batch": batch,
            "prompt_len": args.prompt_len,
            "gen_tokens": new,
            "prefill_tok_s": batch * args.prompt_len / prefill_s,
            "decode_tok_s": batch * (new - 1) / decode_s,
            "decode_ms_per_step": 1000 * decode_s / max(new - 1, 1),
            "warmup_s": warm_s,
            "load_s": load_s,
        }
        if cuda:
            result["peak_gpu_mib_allocated"] = torch.cuda.max_memory_allocated() / 2**20
            result["peak_gpu_mib_reserved"] = torch.cuda.max_memory_reserved() / 2**20
        print(f"batch {batch:>3}: prefill {result['prefill_tok_s']:9.1f} tok/s, decode "
              f"{result['decode_tok_s']:8.1f} tok/s", file=sys.stderr)
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
