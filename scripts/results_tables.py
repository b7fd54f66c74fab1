#!/usr/bin/env python3
"""Prints RESULTS.md's tables from experiment folders' table.json (ours next to the paper's).

    python3 scripts/results_tables.py results/exp-selection results/exp-guidance-quick ...

Recall and Precision are printed in % like the paper's tables; FID as is. Our metrics are in the
feature space of the small Fashion-MNIST classifier (128-d), the paper's in InceptionV3's on
ImageNet 128x128, so only directions and orderings are comparable, not magnitudes.
"""
import json
import sys


def pct(v):
    return f"{100 * v:.2f}"


def main():
    for folder in sys.argv[1:]:
        t = json.load(open(f"{folder}/table.json"))
        paper = {p["row"]: p for p in t["paper"]}
        keys = list(t["cells"][0]["params"].keys()) if t["cells"] else []
        debias = t["experiment"] == "debias"
        head = keys + ["Recall %", "Precision %", "FID", "Coverage %"]
        if debias:
            head += ["inverted share", "KL to uniform"]
        if paper:
            head += ["paper Recall %", "paper Precision %", "paper FID"]
        print(f"<!-- {folder}/table.json: {t['command']} ({t['finished_utc']}) -->")
        print("| " + " | ".join(head) + " |")
        print("|" + "|".join([" --- "] * len(head)) + "|")
        for c in t["cells"]:
            r = c["report"]
            row = [c["params"][k] for k in keys]
            row += [pct(r["recall"]), pct(r["precision"]), f"{r['fid']:.2f}", pct(r["coverage"])]
            if debias:
                a = r.get("attribute") or {}
                n = sum(a.get("counts", [0, 0])) or 1
                row += [f"{a.get('counts', [0, 0])[1] / n:.3f}", f"{a.get('kl_to_uniform', float('nan')):.4f}"]
            if paper:
                p = paper.get(c["name"])
                row += [f"{p['recall']:.2f}", f"{p['precision']:.2f}", f"{p['fid']:.2f}"] if p else ["—"] * 3
            print("| " + " | ".join(row) + " |")
        print()


if __name__ == "__main__":
    main()
