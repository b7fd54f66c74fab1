# Within-class pixel spread, split into global brightness/contrast and the rest.
import numpy as np, gzip, sys
def load_real():
    with gzip.open('data/fashion-mnist/t10k-images-idx3-ubyte.gz','rb') as fh:
        x = np.frombuffer(fh.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open('data/fashion-mnist/t10k-labels-idx1-ubyte.gz','rb') as fh:
        y = np.frombuffer(fh.read(), np.uint8, offset=8)
    return x[:2000], y[:2000].astype(np.int64)
def pdist_mean(a):
    g = a @ a.T; n = np.diag(g); d2 = np.maximum(n[:, None] + n[None, :] - 2 * g, 0)
    iu = np.triu_indices(len(a), 1); return np.sqrt(d2[iu]).mean()
def stats(x, y):
    x = x.reshape(len(x), -1).astype(np.float64) / 255
    m = x.mean(1, keepdims=True); s = x.std(1, keepdims=True) + 1e-8
    z = (x - m) / s
    pool = x.reshape(-1, 28, 28)[:, :24, :24].reshape(-1, 8, 3, 8, 3).mean((2, 4)).reshape(len(x), -1)
    raw, nz, pb, ps, p8 = [], [], [], [], []
    for c in range(10):
        i = y == c
        raw.append(pdist_mean(x[i])); nz.append(pdist_mean(z[i]) / 28)
        pb.append(m[i].std()); ps.append(s[i].std()); p8.append(pdist_mean(pool[i]))
    return np.mean(raw), np.mean(nz), np.mean(pb), np.mean(ps), np.mean(p8), m.mean()
xr, yr = load_real()
R = stats(xr, yr)
print(f"{'set':<28} raw-dist  norm-dist  sd(mean)  sd(std)  pool8-dist  mean   (ratios to real)")
def show(name, S):
    print(f"{name:<28} {S[0]:.3f}    {S[1]:.3f}     {S[2]:.4f}    {S[3]:.4f}   {S[4]:.3f}    {S[5]:.3f}  raw {S[0]/R[0]:.3f} norm {S[1]/R[1]:.3f} bright {S[2]/R[2]:.3f} p8 {S[4]/R[4]:.3f}")
show("real", R)
for p in sys.argv[1:]:
    x = np.load(p); y = np.load(p.replace('.npy', '.labels.npy'))
    show(p.split('/')[-1], stats(x, y))
