"""PyTorch timing of one V-JEPA 2 pretraining step, the peer of `trainer bench-pretrain`.

Why it exists: BENCHMARKS.md puts the Rust trainer's pretraining throughput next to PyTorch on
the same machine. The upstream training code cannot be fetched here, so this is an independent,
compact PyTorch implementation of the same step written for this project from the reference
notes (DESIGN.md "Model facts", vjepa2-reference-notes.md sections 1-4): ViT encoder with 3-D
RoPE (tiled frequencies, adjacent-pair rotation), predictor (embed, mask token, RoPE on the
construction grid, norm, projection), the EMA target encoder with a no-affine LayerNorm target,
two multi-block mask configs (8 x 0.15 and 2 x 0.7 spatial, full-duration tubes), L1 loss
averaged over the configs, AdamW with the reference parameter groups, EMA update.

Run with the torch venv of bench/ (see bench/README.md):

    bench/.venv/bin/python trainer/src/reference_bench/torch_pretrain_step.py \
        --model vit_tiny --frames 16 --crop 112 --batch 4 --steps 5 --threads 2
"""

import argparse
import json
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

PRESETS = {"vit_tiny": (192, 12, 3), "vit_small": (384, 12, 6), "vit_base": (768, 12, 12)}


def rope_cos_sin(pos, head_dim):
    """cos/sin [B, N, hd] for integer positions pos [B, N, 3] (t, h, w)."""
    s = 2 * ((head_dim // 3) // 2)
    m = s // 2
    omega = 1.0 / 10000 ** (torch.arange(m, dtype=torch.float32) / m)
    parts_c, parts_s = [], []
    for a in range(3):
        th = pos[..., a : a + 1].float() * omega  # [B, N, m]
        th = torch.cat([th, th], dim=-1)  # tiled
        parts_c.append(th.cos())
        parts_s.append(th.sin())
    tail = head_dim - 3 * s
    b, n = pos.shape[:2]
    parts_c.append(torch.ones(b, n, tail))
    parts_s.append(torch.zeros(b, n, tail))
    return torch.cat(parts_c, -1), torch.cat(parts_s, -1)


def rotate(x, cos, sin):
    """x [B, H, N, hd]; partner y[2j] = -x[2j+1], y[2j+1] = x[2j]."""
    y = torch.stack([-x[..., 1::2], x[..., 0::2]], dim=-1).flatten(-2)
    return x * cos[:, None] + y * sin[:, None]


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.h = heads
        self.n1 = nn.LayerNorm(d, eps=1e-6)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.n2 = nn.LayerNorm(d, eps=1e-6)
        self.fc1 = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)

    def forward(self, x, cos, sin):
        b, n, d = x.shape
        q, k, v = self.qkv(self.n1(x)).unflatten(-1, (3, self.h, d // self.h)).permute(2, 0, 3, 1, 4)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        x = x + self.proj(o)
        return x + self.fc2(F.gelu(self.fc1(self.n2(x))))


def positions(ids, hp, wp):
    return torch.stack([ids // (hp * wp), (ids % (hp * wp)) // wp, ids % wp], dim=-1)


class Encoder(nn.Module):
    def __init__(self, d, depth, heads):
        super().__init__()
        self.d, self.heads = d, heads
        self.patch = nn.Conv3d(3, d, (2, 16, 16), (2, 16, 16))
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(d, eps=1e-6)

    def forward(self, video, keep=None):
        b, _, t, h, w = video.shape
        tp, hp, wp = t // 2, h // 16, w // 16
        x = self.patch(video).flatten(2).transpose(1, 2)
        ids = torch.arange(tp * hp * wp).expand(b, -1) if keep is None else keep
        if keep is not None:
            x = torch.gather(x, 1, keep[..., None].expand(-1, -1, self.d))
        cos, sin = rope_cos_sin(positions(ids, hp, wp), self.d // self.heads)
        for blk in self.blocks:
            x = blk(x, cos, sin)
        return self.norm(x)


class Predictor(nn.Module):
    def __init__(self, d_enc, d=384, depth=12, heads=12):
        super().__init__()
        self.d, self.heads = d, heads
        self.embed = nn.Linear(d_enc, d)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.proj = nn.Linear(d, d_enc)

    def forward(self, z, keep, tgt, hp, wp):
        b, kt = tgt.shape
        x = torch.cat([self.embed(z), self.mask_token.expand(b, kt, -1)], 1)
        ids = torch.cat([keep, tgt], 1)
        cos, sin = rope_cos_sin(positions(ids, hp, wp), self.d // self.heads)
        for blk in self.blocks:
            x = blk(x, cos, sin)
        return self.proj(self.norm(x)[:, -kt:])


def masks(b, tp, hp, wp, scale, blocks, gen):
    """Multi-block tube masks with one block size per batch, truncated to batch minimum."""
    keep_n = int(hp * wp * scale)
    ar = 0.75 + torch.rand(1, generator=gen).item() * 0.75
    h = min(hp, round(math.sqrt(keep_n * ar)))
    w = min(wp, round(math.sqrt(keep_n / ar)))
    ctx, tgt = [], []
    for _ in range(b):
        m = torch.ones(tp, hp, wp, dtype=torch.bool)
        for _ in range(blocks):
            top = torch.randint(0, hp - h + 1, (1,), generator=gen).item()
            left = torch.randint(0, wp - w + 1, (1,), generator=gen).item()
            m[:, top : top + h, left : left + w] = False
        m = m.flatten()
        ctx.append(m.nonzero().squeeze(1))
        tgt.append((~m).nonzero().squeeze(1))
    kc, kt = min(len(c) for c in ctx), min(len(t) for t in tgt)
    return torch.stack([c[:kc] for c in ctx]), torch.stack([t[:kt] for t in tgt])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="vit_tiny", choices=sorted(PRESETS))
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--crop", type=int, default=112)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pred-depth", type=int, default=12)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    d, depth, heads = PRESETS[args.model]
    enc = Encoder(d, depth, heads)
    tgt_enc = Encoder(d, depth, heads)
    tgt_enc.load_state_dict(enc.state_dict())
    for p in tgt_enc.parameters():
        p.requires_grad_(False)
    pred = Predictor(d, depth=args.pred_depth)
    named = list(enc.named_parameters()) + list(pred.named_parameters())
    decay = [p for n, p in named if "bias" not in n and p.ndim != 1]
    no_decay = [p for n, p in named if "bias" in n or p.ndim == 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.04}, {"params": no_decay, "weight_decay": 0.0}], lr=1.75e-4)
    tp, hp, wp = args.frames // 2, args.crop // 16, args.crop // 16
    video = torch.randn(args.batch, 3, args.frames, args.crop, args.crop)
    gen = torch.Generator().manual_seed(0)
    times = []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        with torch.no_grad():
            h = F.layer_norm(tgt_enc(video), (d,))
        loss = 0.0
        for scale, blocks in ((0.15, 8), (0.7, 2)):
            keep, tgt = masks(args.batch, tp, hp, wp, scale, blocks, gen)
            z = enc(video, keep)
            p = pred(z, keep, tgt, hp, wp)
            ht = torch.gather(h, 1, tgt[..., None].expand(-1, -1, d))
            loss = loss + (p - ht).abs().mean()
        loss = loss / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            for pt, po in zip(tgt_enc.parameters(), enc.parameters()):
                pt.mul_(0.99925).add_(po, alpha=1 - 0.99925)
        dt = time.perf_counter() - t0
        if i >= args.warmup:
            times.append(dt)
    med = statistics.median(times)
    print(json.dumps({
        "engine": "pytorch", "torch": torch.__version__, "model": args.model, "frames": args.frames,
        "crop": args.crop, "batch": args.batch, "threads": args.threads, "steps": args.steps,
        "median_step_s": med, "min_step_s": min(times), "clips_per_s": args.batch / med,
    }))


if __name__ == "__main__":
    main()
