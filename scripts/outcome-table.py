#!/usr/bin/env python3
"""The table of scripts/outcome: reads OUT/PREFIX-1 and OUT/PREFIX-2 (each judged the held-out
answers under the initial prompt, A, and under a prompt found, B) and prints, per aspect and overall:
each prompt's mean in each evaluation, the difference B - A, a bootstrap 95% interval of that
difference over queries, the share of queries B improved, and the judge's noise: how far the two
evaluations of the very same answers lie apart. Markdown, on stdout.

Usage: scripts/outcome-table.py OUT PREFIX    (e.g. eval-found-evaluation)
"""

import json
import random
import statistics
import sys


def load(path):
    return [json.loads(line) for line in open(path) if line.strip()]


def labels_of(out, prefix, seed):
    """The evaluation's two labels, in order: the initial prompt's answers, then the found's."""
    details = json.load(open(f"{out}/{prefix}-{seed}/result.json"))["details"]
    if isinstance(details, str):
        details = json.loads(details)
    return details["labels"]


def aspect_scores(entry, label):
    scores = entry[label]["scores"] or {}
    return {name: value["score"] for name, value in scores.items() if value.get("score") is not None}


def per_query(evaluation, labels, aspect):
    """(id, A's score, B's score) for the queries where both were judged on `aspect`;
    aspect None: each answer's mean over its aspects."""
    rows = []
    for entry in evaluation:
        a, b = aspect_scores(entry, labels[0]), aspect_scores(entry, labels[1])
        if aspect is None:
            if a and b:
                rows.append((entry["id"], statistics.mean(a.values()), statistics.mean(b.values())))
        elif aspect in a and aspect in b:
            rows.append((entry["id"], a[aspect], b[aspect]))
    return rows


def bootstrap_interval(differences, rounds=2000, seed=0):
    if len(differences) < 2:
        return None
    rng = random.Random(seed)
    means = sorted(
        statistics.mean(rng.choice(differences) for _ in differences) for _ in range(rounds)
    )
    return means[int(0.025 * rounds)], means[int(0.975 * rounds) - 1]


def main():
    out, prefix = sys.argv[1], sys.argv[2]
    evaluations = [load(f"{out}/{prefix}-{seed}/evaluation.jsonl") for seed in (1, 2)]
    labels = labels_of(out, prefix, 1)
    aspects = sorted({name for e in evaluations[0] for label in labels for name in aspect_scores(e, label)})
    print(f"## {prefix} ({out})\n")
    print(f"A = the initial prompt ({labels[0]}), B = the prompt found ({labels[1]}); each held-out")
    print("answer judged in two evaluations (seeds 1 and 2) that differ only by the judge's sampling.\n")
    print("| aspect | queries | A (eval 1, eval 2) | B (eval 1, eval 2) | B - A (mean of both) | "
          "95% interval of B - A | B better on | noise: A, B |")
    print("|---|---|---|---|---|---|---|---|")
    verdicts = []
    for aspect in aspects + [None]:
        rows = [per_query(evaluation, labels, aspect) for evaluation in evaluations]
        if not rows[0] or not rows[1]:
            continue
        mean = lambda values: statistics.mean(values) if values else float("nan")
        a = [mean([r[1] for r in rs]) for rs in rows]
        b = [mean([r[2] for r in rs]) for rs in rows]
        difference = mean([b[0] - a[0], b[1] - a[1]])
        by_id = [{r[0]: r for r in rs} for rs in rows]
        shared = sorted(set(by_id[0]) & set(by_id[1]))
        per_query_difference = [
            mean([by_id[s][q][2] - by_id[s][q][1] for s in (0, 1)]) for q in shared
        ]
        interval = bootstrap_interval(per_query_difference)
        better = [sum(1 for r in rs if r[2] > r[1]) for rs in rows]
        noise_a, noise_b = abs(a[0] - a[1]), abs(b[0] - b[1])
        name = aspect or "**overall**"
        shown = f"[{interval[0]:+.2f}, {interval[1]:+.2f}]" if interval else "n/a"
        print(f"| {name} | {len(rows[0])} | {a[0]:.2f}, {a[1]:.2f} | {b[0]:.2f}, {b[1]:.2f} | "
              f"{difference:+.2f} | {shown} | {better[0]}/{len(rows[0])}, {better[1]}/{len(rows[1])} | "
              f"{noise_a:.2f}, {noise_b:.2f} |")
        if aspect is None:
            verdicts.append((difference, interval, max(noise_a, noise_b)))
    for difference, interval, noise in verdicts:
        clear = interval is not None and (interval[0] > 0 or interval[1] < 0)
        print()
        if abs(difference) <= noise:
            print(f"Overall, B - A = {difference:+.2f} is within the judge's noise "
                  f"({noise:.2f} between two evaluations of the same answers).")
        elif not clear:
            print(f"Overall, B - A = {difference:+.2f} is larger than the judge's noise ({noise:.2f}), "
                  "but its 95% interval over queries includes 0.")
        else:
            print(f"Overall, B - A = {difference:+.2f}, beyond the judge's noise ({noise:.2f}), "
                  "and its 95% interval over queries excludes 0.")
    print()


if __name__ == "__main__":
    main()
