"""Summarises scripts/judge-check: per judge, how often it ranked the good answer above the
flawed one, the mean scores of each, and the flaws it missed.
Usage: python3 scripts/judge-check-table.py OUT MODE..."""
import json
import sys

out, modes = sys.argv[1], sys.argv[2:]
flaws = {}
for line in open("scripts/data/judge-calibration.jsonl"):
    if line.strip():
        item = json.loads(line)
        flaws[item["id"]] = item["flaw"]


def mean(values):
    return sum(values) / len(values) if values else float("nan")


for mode in modes:
    rows = [json.loads(l) for l in open(f"{out}/eval-{mode}/evaluation.jsonl") if l.strip()]
    caught, missed, unusable = [], [], []
    good_means, flawed_means = [], []
    for row in rows:
        if mode == "pairwise":
            better = row["pairwise"]["better"]
            if better is None:
                unusable.append(row["id"])
            elif better == "second":
                missed.append((row["id"], "preferred the flawed answer"))
            elif better == "tie":
                missed.append((row["id"], "a tie" + (" (flipped with the order)" if row["pairwise"]["flip"] else "")))
            else:
                caught.append(row["id"])
            continue
        good, flawed = row["good"]["mean"], row["flawed"]["mean"]
        if good is None or flawed is None:
            unusable.append(row["id"])
            continue
        good_means.append(good)
        flawed_means.append(flawed)
        if good > flawed:
            caught.append(row["id"])
        else:
            how = "the same mean" if good == flawed else "the flawed answer higher"
            missed.append((row["id"], f"{how} ({good:.2f} and {flawed:.2f})"))
    print(f"## {mode}\n")
    print(f"Good answer ranked above the flawed one on {len(caught)} of {len(rows)} queries"
          + (f" ({len(unusable)} without a usable judgement)" if unusable else "") + ".")
    if good_means:
        print(f"Mean score: good {mean(good_means):.2f}, flawed {mean(flawed_means):.2f}, "
              f"gap {mean(good_means) - mean(flawed_means):+.2f}.")
    for qid, how in missed:
        print(f"- missed {flaws[qid]} ({qid}): {how}")
    print()
