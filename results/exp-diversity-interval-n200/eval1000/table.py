import json, os, statistics as st, sys
O = os.environ.get("O", os.path.dirname(os.path.abspath(__file__)))
# T: the evaluation sampler's step count when it is not 10 (files base25-s1-inception.json ...).
T = os.environ.get("T", "")
# rl1x: the 20-epoch models (run_adapters.sh); r29: the sigma_scale 0.25 lead at 20 epochs.
# METHODS (space-separated) and PAIRS ("a:b a:b") override the default rows and comparisons.
methods = os.environ.get("METHODS", "base plain cads rl1x rl2x r29").split()
keys = ["recall", "precision", "fid", "coverage"]
def load(m, s, x):
    p = f"{O}/{m}{T}-s{s}-{x}.json"
    if not os.path.exists(p):
        return None
    j = json.load(open(p))
    return {k: j[k] for k in keys}
for x in ["pixels", "inception"]:
    print(f"## {x} (1,000 generated vs fashion-mnist:eval, {T or 10} DDIM steps)")
    print("| method | seed | R | P | FID | C |")
    for m in methods:
        for s in [1, 2, 3]:
            r = load(m, s, x)
            if r:
                print(f"| {m} | {s} | {r['recall']:.3f} | {r['precision']:.3f} | {r['fid']:.3f} | {r['coverage']:.3f} |")
    pairs = [("plain", "rl2x"), ("base", "rl2x"), ("cads", "rl2x"), ("plain", "base"), ("plain", "cads"),
             ("plain", "rl1x"), ("base", "rl1x"), ("rl1x", "rl2x"), ("plain", "r29"), ("base", "r29"), ("rl2x", "r29")]
    if os.environ.get("PAIRS"):
        pairs = [tuple(p.split(":")) for p in os.environ["PAIRS"].split()]
    for a, b in pairs:
        ds = {k: [] for k in keys}
        for s in [1, 2, 3]:
            ra, rb = load(a, s, x), load(b, s, x)
            if ra and rb:
                for k in keys:
                    ds[k].append(rb[k] - ra[k])
        if ds["recall"]:
            out = []
            for k in keys:
                v = ds[k]
                sd = st.stdev(v) if len(v) > 1 else float("nan")
                out.append(f"{k} {st.mean(v):+.4f} ± {sd:.4f} ({sum(d > 0 for d in v)}/{len(v)} up) [{', '.join(f'{d:+.4f}' for d in v)}]")
            print(f"{b} vs {a}: " + "; ".join(out))
    print()
