# Oracle-balanced subsets of one pool of base samples: what a perfect reweighting of the base
# (no new images, only their proportions) scores. Oracle = divrl's inversion oracle: mean of the
# one-pixel border > 0.5.
import numpy as np, sys
# Usage: python subsets.py [FOLDER]  (FOLDER holds base.npy and base.labels.npy from `divrl sample --npy`;
# default /work/runs/bal, the first study's; the second's was /work/runs/bal2).
d = sys.argv[1] if len(sys.argv) > 1 else '/work/runs/bal'
x = np.load(f'{d}/base.npy').astype(np.float64) / 255.0
y = np.load(f'{d}/base.labels.npy')
border = np.concatenate([x[:, 0, :], x[:, -1, :], x[:, 1:-1, 0], x[:, 1:-1, -1]], axis=1)
inv = border.mean(axis=1) > 0.5
print('samples', len(x), 'inverted share', inv.mean())
for c in range(10):
    print(c, (y == c).sum(), inv[y == c].sum())
rng = np.random.default_rng(0)
def save(name, idx):
    idx = np.array(sorted(idx))
    np.save(f'{d}/{name}.npy', (x[idx] * 255).round().astype(np.uint8))
    np.save(f'{d}/{name}.labels.npy', y[idx].astype(np.int64))
    print(name, len(idx), 'inverted', inv[idx].mean())
for rep in range(3):
    nat, bal = [], []
    for c in range(10):
        ic = np.flatnonzero(y == c)
        nat += list(rng.choice(ic, 50, replace=False))
        n_inv = np.flatnonzero((y == c) & inv)
        n_nor = np.flatnonzero((y == c) & ~inv)
        k = min(25, len(n_inv))
        bal += list(rng.choice(n_inv, k, replace=False)) + list(rng.choice(n_nor, 50 - k, replace=False))
    save(f'natural{rep}', nat)
    save(f'balanced{rep}', bal)
