#!/usr/bin/env python3
"""The divrl class-conditional UNet written in PyTorch, layer for layer and name for name
(crates/divrl/src/models/unet.rs), to time training and sampling side by side with divrl and to
check that a divrl checkpoint gives the same outputs here.

  python bench/unet_torch.py train  --steps 20 --batch-size 64         # images/s, fwd+bwd+AdamW
  python bench/unet_torch.py sample --n 80 --steps 50 --guidance 1      # images/s, DDIM eta=1
  python bench/unet_torch.py parity --checkpoint models/fashion-mnist-base  # prints eps for a fixed input
"""
import argparse
import json
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = None

DEFAULT = dict(in_channels=1, image_size=28, base_channels=32, channel_mult=[1, 2, 2], num_res_blocks=2,
               attn_levels=[2], num_heads=4, num_classes=10, groups=8, dropout=0.0)


class ResBlock(nn.Module):
    def __init__(self, cin, cout, temb, g):
        super().__init__()
        self.norm1 = nn.GroupNorm(g, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.temb = nn.Linear(temb, cout)
        self.norm2 = nn.GroupNorm(g, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb(F.silu(emb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.skip(x) if self.skip is not None else x) + h


class AttnBlock(nn.Module):
    def __init__(self, c, heads, g):
        super().__init__()
        self.norm = nn.GroupNorm(g, c)
        self.to_q, self.to_k, self.to_v, self.to_out = (nn.Linear(c, c) for _ in range(4))
        self.heads = heads

    def forward(self, x):
        b, c, h, w = x.shape
        t = self.norm(x).flatten(2).transpose(1, 2)
        d = c // self.heads
        split = lambda y: y.view(b, h * w, self.heads, d).transpose(1, 2)
        a = F.scaled_dot_product_attention(split(self.to_q(t)), split(self.to_k(t)), split(self.to_v(t)))
        a = a.transpose(1, 2).reshape(b, h * w, c)
        return x + self.to_out(a).transpose(1, 2).reshape(b, c, h, w)


class UNet(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        ch, g = cfg["base_channels"], cfg["groups"]
        temb = 4 * ch
        self.conv_in = nn.Conv2d(cfg["in_channels"], ch, 3, padding=1)
        self.time1 = nn.Linear(ch, temb)
        self.time2 = nn.Linear(temb, temb)
        self.class_emb = nn.Embedding(cfg["num_classes"] + 1, temb)
        levels = len(cfg["channel_mult"])
        self.down = nn.ModuleList()
        skip_ch, cur = [ch], ch
        for lvl, m in enumerate(cfg["channel_mult"]):
            out = ch * m
            for _ in range(cfg["num_res_blocks"]):
                self.down.append(ResBlock(cur, out, temb, g))
                cur = out
                if lvl in cfg["attn_levels"]:
                    self.down.append(AttnBlock(cur, cfg["num_heads"], g))
                skip_ch.append(cur)
            if lvl + 1 < levels:
                self.down.append(nn.Conv2d(cur, cur, 3, stride=2, padding=1))
                skip_ch.append(cur)
        self.mid = nn.ModuleList([ResBlock(cur, cur, temb, g), AttnBlock(cur, cfg["num_heads"], g),
                                  ResBlock(cur, cur, temb, g)])
        self.up = nn.ModuleList()
        self.up_kinds = []
        for lvl in reversed(range(levels)):
            out = ch * cfg["channel_mult"][lvl]
            for _ in range(cfg["num_res_blocks"] + 1):
                self.up.append(ResBlock(cur + skip_ch.pop(), out, temb, g))
                cur = out
                if lvl in cfg["attn_levels"]:
                    self.up.append(AttnBlock(cur, cfg["num_heads"], g))
            if lvl > 0:
                self.up.append(nn.Conv2d(cur, cur, 3, padding=1))
        self.norm_out = nn.GroupNorm(g, cur)
        self.conv_out = nn.Conv2d(cur, cfg["in_channels"], 3, padding=1)

    def forward(self, x, t, y):
        ch = self.cfg["base_channels"]
        half = ch // 2
        freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=x.device) * (-math.log(10000.0) / half))
        args = t.float()[:, None] * freqs[None]
        emb = self.time2(F.silu(self.time1(torch.cat([args.cos(), args.sin()], 1))))
        emb = emb + self.class_emb(y)
        h = self.conv_in(x)
        skips = [h]
        for l in self.down:
            if isinstance(l, ResBlock):
                h = l(h, emb)
                skips.append(h)
            elif isinstance(l, AttnBlock):
                h = l(h)
                skips[-1] = h
            else:
                h = l(h)
                skips.append(h)
        for l in self.mid:
            h = l(h, emb) if isinstance(l, ResBlock) else l(h)
        for l in self.up:
            if isinstance(l, ResBlock):
                h = l(torch.cat([h, skips.pop()], 1), emb)
            elif isinstance(l, AttnBlock):
                h = l(h)
            else:
                h = l(F.interpolate(h, scale_factor=2, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))


def alphas_cumprod(T=1000, b0=1e-4, b1=0.02):
    betas = torch.linspace(b0, b1, T, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


def load_cfg(path):
    if path is None:
        return dict(DEFAULT)
    with open(path + "/config.toml", "rb") as f:
        return tomllib.load(f)["model"]


def cmd_train(a):
    cfg = load_cfg(a.checkpoint)
    model = UNet(cfg)
    ac = alphas_cumprod().float()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    n = a.batch_size
    s = cfg["image_size"]
    data = torch.rand(60000, cfg["in_channels"], s, s)  # stands in for the 60k training images
    labels = torch.randint(0, cfg["num_classes"], (60000,))
    ema = [p.detach().clone() for p in model.parameters()]
    times = []
    for i in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        idx = torch.randint(0, 60000, (n,))
        x0 = data[idx] * 2 - 1
        y = labels[idx].masked_fill(torch.rand(n) < 0.1, cfg["num_classes"])
        t = torch.randint(0, 1000, (n,))
        eps = torch.randn_like(x0)
        a_t = ac[t].view(-1, 1, 1, 1)
        xt = a_t.sqrt() * x0 + (1 - a_t).sqrt() * eps
        loss = F.mse_loss(model(xt, t, y), eps)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            for e, p in zip(ema, model.parameters()):
                e.mul_(0.998).add_(p, alpha=0.002)
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
    sec = sum(times) / len(times)
    params = sum(p.numel() for p in model.parameters())
    print(json.dumps(dict(framework=f"pytorch {torch.__version__}", what="train", params=params, batch=n,
                          s_per_step=sec, images_per_s=n / sec, threads=torch.get_num_threads())))


@torch.no_grad()
def cmd_sample(a):
    cfg = load_cfg(a.checkpoint)
    model = UNet(cfg).eval()
    ac = alphas_cumprod()
    T = 1000
    ts = [round((T - 1) * (1 - i / a.steps)) for i in range(a.steps + 1)]
    s = cfg["image_size"]
    n = a.n
    y = torch.arange(n) % cfg["num_classes"]
    null = torch.full((n,), cfg["num_classes"])
    t0 = time.perf_counter()
    x = torch.randn(n, cfg["in_channels"], s, s)
    for tt, ss in zip(ts[:-1], ts[1:]):
        tv = torch.full((n,), tt)
        if a.guidance == 1.0:
            eps = model(x, tv, y)
        else:
            e = model(torch.cat([x, x]), torch.cat([tv, tv]), torch.cat([y, null]))
            ec, eu = e.chunk(2)
            eps = eu + a.guidance * (ec - eu)
        a_t, a_s = ac[tt].item(), ac[ss].item()
        x0 = ((x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)).clamp(-1, 1)
        var = a.eta ** 2 * (1 - a_s) / (1 - a_t) * (1 - a_t / a_s)
        e_hat = (x - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)
        mean = math.sqrt(a_s) * x0 + math.sqrt(max(1 - a_s - var, 0.0)) * e_hat
        sample = mean + math.sqrt(var) * torch.randn_like(x)
        _lp = (-(sample - mean) ** 2 / (2 * var) - 0.5 * math.log(2 * math.pi * var)).mean(dim=(1, 2, 3))
        x = sample
    sec = time.perf_counter() - t0
    print(json.dumps(dict(framework=f"pytorch {torch.__version__}", what="sample", n=n, steps=a.steps,
                          guidance=a.guidance, seconds=sec, images_per_s=n / sec, threads=torch.get_num_threads())))


def load_safetensors(path):
    """Minimal safetensors reader (F32/I64 only) so no extra package is needed."""
    import numpy as np
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        body = f.read()
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        dt = {"F32": np.float32, "I64": np.int64}[v["dtype"]]
        s, e = v["data_offsets"]
        out[k] = torch.from_numpy(np.frombuffer(body[s:e], dtype=dt).reshape(v["shape"]).copy())
    return out


@torch.no_grad()
def cmd_parity(a):
    cfg = load_cfg(a.checkpoint)
    model = UNet(cfg).eval()
    sd = load_safetensors(a.checkpoint + "/ema.safetensors")
    model.load_state_dict(sd, strict=True)
    s = cfg["image_size"]
    n = 4 * cfg["in_channels"] * s * s
    x = (torch.arange(n, dtype=torch.float32) * 0.37).sin().view(4, cfg["in_channels"], s, s)
    t = torch.tensor([999, 500, 100, 0])
    y = torch.tensor([0, 3, 9, cfg["num_classes"]])
    eps = model(x, t, y)
    print(json.dumps(dict(eps_mean=eps.mean().item(), eps_std=eps.std().item(), eps_first=eps.flatten()[:5].tolist())))
    # Same input as crates/divrl/examples/eps_probe.rs; the two must agree to float precision.


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("train", "sample", "parity"):
        q = sub.add_parser(name)
        q.add_argument("--checkpoint", default=None, help="read [model] from CHECKPOINT/config.toml")
        q.add_argument("--threads", type=int, default=0)
        if name == "train":
            q.add_argument("--steps", type=int, default=20)
            q.add_argument("--warmup", type=int, default=3)
            q.add_argument("--batch-size", type=int, default=64)
        if name == "sample":
            q.add_argument("--n", type=int, default=80)
            q.add_argument("--steps", type=int, default=50)
            q.add_argument("--guidance", type=float, default=1.0)
            q.add_argument("--eta", type=float, default=1.0)
    a = p.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    {"train": cmd_train, "sample": cmd_sample, "parity": cmd_parity}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
