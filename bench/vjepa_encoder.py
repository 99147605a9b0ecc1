"""A small, independent PyTorch implementation of the V-JEPA 2 / EchoJEPA video encoder.

Why it exists: the peer benchmark (peer_bench.py) needs the encoder in PyTorch to export it to
ONNX and time ONNX Runtime (f32 and dynamic int8) next to the Rust edge runtime. It follows the
V-JEPA 2 encoder as the repository's Rust model does (echojepa/src/model), including the RoPE
quirk (tiled cos/sin with adjacent-pair rotation), and is checked against the conformance fixture
in tests/fixtures/conformance.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

PRESETS = {
    "vit_tiny": (192, 12, 3),
    "vit_small": (384, 12, 6),
    "vit_base": (768, 12, 12),
    "vit_large": (1024, 24, 16),
    # the demo bundle's encoder (configs/quickstart, edge-runtime/demo/bundle): 96 wide, 4 blocks
    "demo": (96, 4, 4),
}


def rope_tables(t, hp, wp, head_dim, dtype):
    """cos/sin tables [N, head_dim] for raw integer (t, h, w) patch positions.

    Per head: segments of s = 2*floor(floor(hd/3)/2) dims for time, height, width, then an
    unrotated tail (cos 1, sin 0). Within a segment of length s (m = s/2 frequencies) the
    angles are TILED: theta[i] = p * omega[i mod m], omega_k = 10000^(-k/m).
    """
    s = 2 * ((head_dim // 3) // 2)
    m = s // 2
    n = torch.arange(t * hp * wp)
    pos = [n // (hp * wp), (n % (hp * wp)) // wp, n % wp]
    omega = 1.0 / 10000 ** (torch.arange(m, dtype=dtype) / m)
    cos, sin = [], []
    for p in pos:
        theta = p.to(dtype)[:, None] * omega[None, :]
        theta = torch.cat([theta, theta], dim=1)  # tiled, not interleaved
        cos.append(theta.cos())
        sin.append(theta.sin())
    tail = head_dim - 3 * s
    cos.append(torch.ones(len(n), tail, dtype=dtype))
    sin.append(torch.zeros(len(n), tail, dtype=dtype))
    return torch.cat(cos, dim=1), torch.cat(sin, dim=1)


def apply_rope(x, cos, sin):
    """x [B, H, N, hd]; y[2j] = -x[2j+1], y[2j+1] = x[2j] (adjacent pairs); x*cos + y*sin."""
    x_even = x[..., 0::2]
    x_odd = x[..., 1::2]
    y = torch.stack([-x_odd, x_even], dim=-1).flatten(-2)
    return x * cos + y * sin


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x, cos, sin):
        b, n, d = x.shape
        hd = d // self.heads
        qkv = self.qkv(x).unflatten(-1, (3, self.heads, hd)).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        q = apply_rope(q, cos, sin)
        k = apply_rope(k, cos, sin)
        o = F.scaled_dot_product_attention(q, k, v)
        return self.proj(o.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()  # exact erf form
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim, heads, mlp_ratio):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x, cos, sin):
        x = x + self.attn(self.norm1(x), cos, sin)
        return x + self.mlp(self.norm2(x))


class PatchEmbed3D(nn.Module):
    def __init__(self, dim, patch=16, tubelet=2):
        super().__init__()
        self.proj = nn.Conv3d(3, dim, kernel_size=(tubelet, patch, patch), stride=(tubelet, patch, patch))

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class Encoder(nn.Module):
    """Input [B, 3, T, H, W] -> tokens [B, N, D], N = T/2 * H/16 * W/16."""

    def __init__(self, dim, depth, heads, mlp_ratio=4.0, patch=16, tubelet=2):
        super().__init__()
        self.dim, self.depth, self.heads = dim, depth, heads
        self.patch, self.tubelet = patch, tubelet
        self.patch_embed = PatchEmbed3D(dim, patch, tubelet)
        self.blocks = nn.ModuleList([Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, video):
        _, _, t, h, w = video.shape
        cos, sin = rope_tables(t // self.tubelet, h // self.patch, w // self.patch,
                               self.dim // self.heads, video.dtype)
        x = self.patch_embed(video)
        for blk in self.blocks:
            x = blk(x, cos, sin)
        return self.norm(x)


def load_official(encoder, state_dict):
    """Load an official-format state dict (keys may carry `module.backbone.`); strict."""
    sd = {}
    for k, v in state_dict.items():
        for p in ("module.backbone.", "module.", "backbone."):
            if k.startswith(p):
                k = k[len(p):]
                break
        sd[k] = v
    missing, unexpected = encoder.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ValueError(f"checkpoint does not match the encoder: missing {missing}, unexpected {unexpected}")
    return encoder


def benchmark_weights(encoder, seed):
    """Deterministic random weights with unit-gain scale (so every block changes the tokens
    noticeably, unlike a from-scratch init) and perturbed norms/biases. Synthetic, not trained."""
    g = torch.Generator().manual_seed(seed)
    depth = encoder.depth
    with torch.no_grad():
        for name, p in encoder.named_parameters():
            if name.endswith("weight") and p.dim() >= 2:
                fan_in = p[0].numel()
                std = 1.0 / math.sqrt(fan_in)
                if name.endswith("attn.proj.weight") or name.endswith("fc2.weight"):
                    std /= math.sqrt(2 * depth) / 2
                p.copy_(torch.randn(p.shape, generator=g) * std)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
    return encoder
