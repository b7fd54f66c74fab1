# The paper's yardstick at 25 steps: the share of the Recall that guidance 4 (the plain sampler)
# loses against guidance 1 which each method recovers, per seed, in pixel-8 ϕ and Inception.
#   O=results/exp-diversity-interval-n200/eval1000 python3 yardstick.py   (-> yardstick25.txt)
# (base = interval guidance, cads = CADS, r33 / r33x2 = the preset at 20 / 40 epochs, demo0 =
# the demo's model of 2026-12-04 on the same three noises; g1 = guidance 1.)
import json
import os
import statistics as st

O = os.environ.get("O", "runs/eval1000")


def g(m, s, x):
    return json.load(open(f"{O}/{m}25-s{s}-{x}.json"))["recall"]


for x in ["pixels", "inception"]:
    print(x)
    loss = [g("g1", s, x) - g("plain", s, x) for s in [1, 2, 3]]
    print(" g1", [round(g("g1", s, x), 3) for s in [1, 2, 3]], "loss",
          [round(v, 3) for v in loss], round(st.mean(loss), 3), round(st.stdev(loss), 3))
    for m in ["base", "cads", "r33", "r33x2", "demo0"]:
        rec = [(g(m, s, x) - g("plain", s, x)) / (g("g1", s, x) - g("plain", s, x)) * 100
               for s in [1, 2, 3]]
        print(" ", m, [round(v) for v in rec], round(st.mean(rec), 1), round(st.stdev(rec), 1))
