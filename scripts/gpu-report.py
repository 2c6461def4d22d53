#!/usr/bin/env python3
"""Prints the table of scripts/gpu-check.sh from the files it left in one directory.

Reads parity.jsonl, product.jsonl, matmul.jsonl, matmul-small.jsonl, matmul-DRPO_CUDA_ROWS_*.jsonl
(the `rows` kernel with one shape setting changed), ours.jsonl, hf.jsonl, sweep-defaults.jsonl and
sweep-SWITCH.jsonl (JSON objects, one a line) and mem-ours.txt / mem-hf.txt (nvidia-smi samples of used MiB); missing or
partial files show as "-".
"""
import json
import os
import sys

BOUND_B1 = 3.35e12 / 14.5e9  # H100 bandwidth over Mistral-7B's bf16 bytes: tokens/s at batch 1
GOAL_B1 = 140.0
GOAL_B32 = 2000.0


def setting(name, prefix, suffix):
    """The kernel switch a file of gpu-check.sh is named after, as NAME=VALUE: the file
    PREFIX + "DRPO_CUDA_ROWS_PLANES-8" + SUFFIX with prefix "DRPO_CUDA_ROWS_" gives "PLANES=8"."""
    return "=".join(name[len(prefix):-len(suffix)].rsplit("-", 1))


def lines(path):
    rows = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError:
                        pass
    except OSError:
        pass
    return rows


def peak_mib(path):
    try:
        with open(path) as f:
            values = [float(v) for v in f.read().split() if v.replace(".", "", 1).isdigit()]
    except OSError:
        return None
    if not values:
        return None
    # The first sample is taken before the process allocates: report the growth over it.
    return max(values) - values[0], max(values)


def fmt(value, digits=1):
    return "-" if value is None else f"{value:,.{digits}f}"


def main():
    out = sys.argv[1]
    parity = lines(os.path.join(out, "parity.jsonl"))
    ours = {r["batch"]: r for r in lines(os.path.join(out, "ours.jsonl"))}
    hf = {r["batch"]: r for r in lines(os.path.join(out, "hf.jsonl"))}

    print("parity (cpu f32 vs device):")
    if not parity:
        print("  no result")
    for r in parity:
        print(f"  {r['device']} {r.get('model', '')} ({r.get('kernels', '')}): "
              f"{'PASS' if r['ok'] else 'FAIL'}  max|diff| {r['max_abs_diff']:.4f}"
              f" (relative {r['relative']:.4f}, tolerance {r['tolerance']}), greedy tokens "
              f"{r.get('tokens', 'equal' if r['tokens_equal'] else 'DIFFER')}, prompt lengths {r['prompt_lengths']}")

    answers = [r for r in lines(os.path.join(out, "product.jsonl")) if r.get("kind") == "generate"]
    print()
    print("drpo-host's generation path (LocalModel), the device's answers against the CPU's:")
    if not any(r["same_as_first_device"] is not None for r in answers):
        print("  no result")
    for batch in ("greedy", "schema"):
        rows = [r for r in answers if r["batch"] == batch]
        checked = [r for r in rows if r["same_as_first_device"] is not None]
        if not checked:
            continue
        line = f"  {batch}: {sum(r['same_as_first_device'] for r in checked)} of {len(checked)} equal"
        for device in dict.fromkeys(r["device"] for r in rows):
            mine = [r for r in rows if r["device"] == device]
            line += f"; {device}: {mine[0]['batch_tokens']} tokens in {mine[0]['batch_seconds']:.2f} s"
            if batch == "schema":
                line += f", {sum(bool(r['parses']) for r in mine)} of {len(mine)} parse"
        print(line)

    products = lines(os.path.join(out, "matmul.jsonl")) + lines(os.path.join(out, "matmul-small.jsonl"))
    # The `rows` variants, labelled with their setting (matmul-DRPO_CUDA_ROWS_PLANES-8.jsonl:
    # "rows PLANES=8").
    for f in sorted(os.listdir(out)):
        if f.startswith("matmul-DRPO_CUDA_ROWS_") and f.endswith(".jsonl"):
            label = "rows " + setting(f, "matmul-DRPO_CUDA_ROWS_", ".jsonl")
            products += [dict(r, kernel=label) for r in lines(os.path.join(out, f))]
    if products:
        print()
        print("projections alone (us per product, weight GB/s; max relative diff from the host's "
              "f64 product):")
        for r in products:
            print(f"  {r['shape']:>8} {r['n']:>6}x{r['k']:<6} rows {r['rows']:>3} "
                  f"{r['kernel']:>16}: {r['us']:>9.1f} us {r['weight_gb_s']:>8.1f} GB/s "
                  f"{r['max_rel_diff']:.1e}")

    batches = sorted(set(ours) | set(hf))
    print()
    print(f"{'':28}{'ours (burn-cuda)':>18}{'transformers':>16}{'ratio':>8}")

    def row(label, key, batch):
        a = ours.get(batch, {}).get(key)
        b = hf.get(batch, {}).get(key)
        ratio = a / b if a and b else None
        print(f"{label:28}{fmt(a):>18}{fmt(b):>16}{fmt(ratio, 2):>8}")

    for batch in batches:
        row(f"decode tok/s, batch {batch}", "decode_tok_s", batch)
    for batch in batches:
        row(f"prefill tok/s, batch {batch}", "prefill_tok_s", batch)
    for batch in sorted(ours):
        step = ours[batch].get("decode_ms_per_step")
        issued = ours[batch].get("decode_issue_ms_per_step")
        print(f"{'decode ms/step, batch ' + str(batch):28}{fmt(step, 2):>18}"
              f"   (host issued its kernels in {fmt(issued, 2)} ms)")
    mem_ours = peak_mib(os.path.join(out, "mem-ours.txt"))
    mem_hf = peak_mib(os.path.join(out, "mem-hf.txt"))
    torch_peak = max((r.get("peak_gpu_mib_reserved", 0) for r in hf.values()), default=None)
    print(f"{'peak GPU MiB (nvidia-smi)':28}{fmt(mem_ours and mem_ours[0], 0):>18}"
          f"{fmt(mem_hf and mem_hf[0], 0):>16}")
    print(f"{'peak GPU MiB (torch reserved)':28}{'':>18}{fmt(torch_peak, 0):>16}")

    switches = sorted(f for f in os.listdir(out)
                      if f.startswith("sweep-DRPO_CUDA_") and f.endswith(".jsonl"))
    if switches:
        print()
        print("decode tok/s with one kernel switch changed (SWEEP), and against the defaults run "
              "with the same settings:")
        # sweep-DRPO_CUDA_SMALL_MATMUL-rows.jsonl: "SMALL_MATMUL=rows".
        runs = {"(defaults)": "sweep-defaults.jsonl"}
        runs.update((setting(f, "sweep-DRPO_CUDA_", ".jsonl"), f) for f in switches)
        runs = {k: {r["batch"]: r for r in lines(os.path.join(out, f))} for k, f in runs.items()}
        sweep_batches = sorted({b for r in runs.values() for b in r})
        width = max(len(k) for k in runs) + 2
        print(f"  {'switch':{width}}" + "".join(f"{'batch ' + str(b):>22}" for b in sweep_batches))
        for kernel, rows in runs.items():
            cells = ""
            for b in sweep_batches:
                speed = rows.get(b, {}).get("decode_tok_s")
                base = runs["(defaults)"].get(b, {}).get("decode_tok_s")
                change = f"({100 * (speed / base - 1):+.1f}%)" if speed and base else ""
                cells += f"{fmt(speed):>13} {change:>8}"
            print(f"  {kernel:{width}}{cells}")

    print()
    b1 = ours.get(1, {}).get("decode_tok_s")
    b32 = ours.get(32, {}).get("decode_tok_s")
    print(f"bandwidth bound at batch 1 (3.35 TB/s / 14.5 GB): {BOUND_B1:.0f} tok/s")
    verdict = lambda ok: "MET" if ok else "NOT MET"
    print(f"goal batch-1 decode >= {GOAL_B1:.0f} tok/s: {fmt(b1)} "
          f"({fmt(b1 and 100 * b1 / BOUND_B1, 0)}% of bound) -> {verdict(b1 and b1 >= GOAL_B1)}")
    print(f"goal batch-32 decode >= {GOAL_B32:.0f} tok/s: {fmt(b32)} -> "
          f"{verdict(b32 and b32 >= GOAL_B32)}")
    for batch in (1, 32):
        a = ours.get(batch, {}).get("decode_tok_s")
        b = hf.get(batch, {}).get("decode_tok_s")
        print(f"faster than transformers at batch {batch}: "
              f"{'-' if not (a and b) else verdict(a > b)}")


if __name__ == "__main__":
    main()
