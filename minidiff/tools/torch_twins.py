"""The chapter 6 U-Net and the chapter 9 DiT written again in PyTorch, layer for layer: what
``make bench`` times against minidiff, and the way out for a learner who outgrows the CPU.

``TorchUNet`` mirrors ``minidiff/models/unet.py`` with its default ``UNetConfig`` (same blocks,
channels, AdaGN, attention at 7 x 7, skip concatenation, nearest up-sampling with a convolution,
strided convolution down-sampling); ``TorchDiT`` mirrors ``minidiff/models/dit.py``. Both load
minidiff's weights (``from_numpy``) and compute the same function (``tests/test_bench.py``), so
a model trained here continues in PyTorch:

    python -m minidiff.tools.torch_twins export data/weights/unet_mnist.npz unet.pt

writes ``{"state_dict", "model", "config", "target", "schedule"}`` with ``torch.save``; load it
with ``to_torch``'s twin class and ``load_state_dict``. The nearest libraries' classes:
``TorchUNet`` is ADM's class-conditional U-Net in small (diffusers ``UNet2DModel`` with
``num_class_embeds``, ``resnet_time_scale_shift="scale_shift"``), ``TorchDiT`` is DiT's
(diffusers ``DiTTransformer2DModel``). PyTorch is an optional tool here, never a dependency:
this module is imported only when it is installed.
"""

import argparse
import math
import sys

import numpy as onp
import torch
from torch import nn
from torch.nn import functional as F


class ResBlock(nn.Module):
    def __init__(self, c_in, c_out, emb, groups=8):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb, 2 * c_out)
        self.norm2, self.conv2 = nn.GroupNorm(groups, c_out), nn.Conv2d(c_out, c_out, 3,
                                                                        padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.conv2(F.silu(self.norm2(h) * (1 + scale) + shift))
        return (self.skip(x) + h) / math.sqrt(2.0)


class Attention(nn.Module):
    def __init__(self, c, head_channels=32, groups=8):
        super().__init__()
        self.heads = c // head_channels
        self.norm, self.qkv, self.proj = nn.GroupNorm(groups, c), nn.Linear(c, 3 * c), \
            nn.Linear(c, c)

    def forward(self, x):
        n, c, h, w = x.shape
        tokens = self.norm(x).permute(0, 2, 3, 1).reshape(n, h * w, c)
        q, k, v = self.qkv(tokens).reshape(n, h * w, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, h * w, c)
        return x + self.proj(o).reshape(n, h, w, c).permute(0, 3, 1, 2)


class TorchUNet(nn.Module):
    def __init__(self, channels=(32, 64, 64), num_classes=10, groups=8):
        super().__init__()
        ch0, emb = channels[0], 4 * channels[0]
        self.ch0 = ch0
        self.time = nn.Sequential(nn.Linear(ch0, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.class_emb = nn.Embedding(num_classes + 1, emb)
        self.conv_in = nn.Conv2d(1, ch0, 3, padding=1)
        self.down, skips, c = nn.ModuleList(), [ch0], ch0
        for lv, co in enumerate(channels):
            self.down.append(ResBlock(c, co, emb, groups))
            c = co
            if lv == len(channels) - 1:
                self.down.append(Attention(c))
            skips.append(c)
            if lv != len(channels) - 1:
                self.down.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)
        self.mid = nn.ModuleList([ResBlock(c, c, emb, groups), Attention(c),
                                  ResBlock(c, c, emb, groups)])
        self.up = nn.ModuleList()
        for lv in reversed(range(len(channels))):
            for i in range(2):
                blocks = [ResBlock(c + skips.pop(), channels[lv], emb, groups)]
                c = channels[lv]
                if lv == len(channels) - 1:
                    blocks.append(Attention(c))
                if lv != 0 and i == 1:
                    blocks.append(nn.Conv2d(c, c, 3, padding=1))  # after nearest up-sampling
                self.up.append(nn.ModuleList(blocks))
        self.norm_out, self.conv_out = nn.GroupNorm(groups, c), nn.Conv2d(c, 1, 3, padding=1)

    @torch.no_grad()
    def from_numpy(self, params):
        """Copy ``minidiff.models.unet`` parameters (default ``UNetConfig``) into this twin."""
        def lin(mod, p):
            mod.weight.copy_(torch.from_numpy(onp.ascontiguousarray(p["w"].T)))
            mod.bias.copy_(torch.from_numpy(p["b"]))

        def conv(mod, p):  # torch's Conv2d is minidiff's cross-correlation, (O, C, kh, kw)
            mod.weight.copy_(torch.from_numpy(p["w"]))
            mod.bias.copy_(torch.from_numpy(p["b"]))

        def norm(mod, p):
            mod.weight.copy_(torch.from_numpy(p["gamma"]))
            mod.bias.copy_(torch.from_numpy(p["beta"]))

        def res(mod, p):
            norm(mod.norm1, p["norm1"]), conv(mod.conv1, p["conv1"]), lin(mod.emb, p["emb"])
            norm(mod.norm2, p["norm2"]), conv(mod.conv2, p["conv2"])
            if "skip" in p:
                conv(mod.skip, p["skip"])

        def attn(mod, p):
            norm(mod.norm, p["norm"]), lin(mod.qkv, p["qkv"]), lin(mod.proj, p["proj"])

        lin(self.time[0], params["time1"])
        lin(self.time[2], params["time2"])
        self.class_emb.weight.copy_(torch.from_numpy(params["class_emb"]))
        conv(self.conv_in, params["conv_in"])
        down = iter(self.down)
        for blk in params["down"]:  # {"res", "attn"?} or {"downsample"}, as the twin's list
            if "downsample" in blk:
                conv(next(down), blk["downsample"])
                continue
            res(next(down), blk["res"])
            if "attn" in blk:
                attn(next(down), blk["attn"])
        res(self.mid[0], params["mid"]["res1"])
        attn(self.mid[1], params["mid"]["attn"])
        res(self.mid[2], params["mid"]["res2"])
        for mods, blk in zip(self.up, params["up"], strict=True):
            res(mods[0], blk["res"])
            rest = iter(mods[1:])
            if "attn" in blk:
                attn(next(rest), blk["attn"])
            if "upsample" in blk:
                conv(next(rest), blk["upsample"])
        norm(self.norm_out, params["norm_out"])
        conv(self.conv_out, params["conv_out"])
        return self

    def forward(self, x, t, y):
        half = self.ch0 // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half) / half)
        emb = self.time(torch.cat([torch.sin(t[:, None] * freqs), torch.cos(t[:, None] * freqs)],
                                  1))
        emb = F.silu(emb + self.class_emb(y))
        h = self.conv_in(x)
        hs = [h]
        for m in self.down:
            if isinstance(m, ResBlock):
                h = m(h, emb)
                hs.append(h)
            elif isinstance(m, Attention):
                h = m(h)
                hs[-1] = h
            else:
                h = m(h)
                hs.append(h)
        h = self.mid[2](self.mid[1](self.mid[0](h, emb)), emb)
        for blocks in self.up:
            h = blocks[0](torch.cat([h, hs.pop()], 1), emb)
            for m in blocks[1:]:
                h = m(h) if isinstance(m, Attention) else m(F.interpolate(h, scale_factor=2.0))
        return self.conv_out(F.silu(self.norm_out(h)))


class DiTBlock(nn.Module):
    """adaLN-zero block, as ``minidiff.models.dit._block`` (LayerNorm without affine, eps 1e-6)."""

    def __init__(self, d, heads, mlp_ratio=4):
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, mlp_ratio * d), nn.Linear(mlp_ratio * d, d)
        self.ada = nn.Linear(d, 6 * d)

    def forward(self, x, c):
        n, t, d = x.shape
        sa, ca, ga, sm, cm, gm = self.ada(F.silu(c))[:, None].chunk(6, dim=2)
        h = F.layer_norm(x, (d,), eps=1e-6) * (1 + ca) + sa
        q, k, v = self.qkv(h).reshape(n, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, t, d)
        x = x + ga * self.proj(o)
        h = F.layer_norm(x, (d,), eps=1e-6) * (1 + cm) + sm
        return x + gm * self.fc2(F.gelu(self.fc1(h), approximate="tanh"))


class TorchDiT(nn.Module):
    """The chapter 9 DiT (``DiTConfig()`` defaults: patch 4, width 128, depth 4, 4 heads)."""

    def __init__(self, patch=4, width=128, depth=4, heads=4, resolution=28, num_classes=10):
        super().__init__()
        self.p, self.grid = patch, resolution // patch
        self.embed = nn.Linear(patch * patch, width)
        self.time = nn.Sequential(nn.Linear(256, width), nn.SiLU(), nn.Linear(width, width))
        self.class_emb = nn.Embedding(num_classes + 1, width)
        self.blocks = nn.ModuleList(DiTBlock(width, heads) for _ in range(depth))
        self.final_ada, self.final = nn.Linear(width, 2 * width), nn.Linear(width, patch * patch)
        self.register_buffer("pos", torch.zeros(self.grid**2, width))  # fixed: from_numpy

    def forward(self, x, t, y):
        n, p, g = x.shape[0], self.p, self.grid
        freqs = torch.exp(-math.log(10000.0) * torch.arange(128) / 128)
        c = self.time(torch.cat([torch.sin(t[:, None] * freqs), torch.cos(t[:, None] * freqs)],
                                1)) + self.class_emb(y)
        tok = x.reshape(n, 1, g, p, g, p).permute(0, 2, 4, 3, 5, 1).reshape(n, g * g, p * p)
        h = self.embed(tok) + self.pos
        for blk in self.blocks:
            h = blk(h, c)
        shift, scale = self.final_ada(F.silu(c))[:, None].chunk(2, dim=2)
        out = self.final(F.layer_norm(h, (h.shape[-1],), eps=1e-6) * (1 + scale) + shift)
        return out.reshape(n, g, g, p, p, 1).permute(0, 5, 1, 3, 2, 4).reshape(n, 1, g * p, g * p)

    @torch.no_grad()
    def from_numpy(self, params, pos):
        """Copy ``minidiff.models.dit`` parameters (and its sin-cos table ``pos``) into this twin,
        so a test can check that both compute the same function."""
        def lin(mod, p):
            mod.weight.copy_(torch.from_numpy(p["w"].T.copy()))
            mod.bias.copy_(torch.from_numpy(p["b"]))
        lin(self.embed, params["embed"])
        lin(self.time[0], params["time1"])
        lin(self.time[2], params["time2"])
        self.class_emb.weight.copy_(torch.from_numpy(params["class_emb"]))
        for blk, p in zip(self.blocks, params["blocks"], strict=True):
            for name, key in [("qkv", ("attn", "qkv")), ("proj", ("attn", "proj")),
                              ("fc1", ("mlp", "fc1")), ("fc2", ("mlp", "fc2")), ("ada", ("ada",))]:
                sub = p
                for k in key:
                    sub = sub[k]
                lin(getattr(blk, name), sub)
        lin(self.final_ada, params["final_ada"])
        lin(self.final, params["final"])
        self.pos.copy_(torch.from_numpy(pos))
        return self


# ----------------------------------------------------------------------------- export

def to_torch(weights):
    """The PyTorch twin of a minidiff model file (``train unet`` / ``train dit``), with its
    weights, and the file's metadata. Architectures the twins do not mirror are refused by name."""
    from minidiff.images import load_model
    from minidiff.models import dit, unet

    _, params, cfg, meta = load_model(weights)
    if meta["model"] == "unet":
        default = unet.UNetConfig().to_dict()
        same = {k: v for k, v in cfg.to_dict().items() if k not in ("channels",
                                                                     "attention_levels")}
        if same != {k: default[k] for k in same} \
                or cfg.attention_levels != (len(cfg.channels) - 1,):
            raise ValueError(f"{weights!s}: TorchUNet mirrors the default UNetConfig (any "
                             f"channels, attention at the last level) (got {cfg})")
        return TorchUNet(channels=cfg.channels).from_numpy(params), meta
    if cfg.conditioning != "adaln_zero" or cfg.in_channels != 1:
        raise ValueError(f"{weights!s}: TorchDiT mirrors the adaLN-zero DiT on one channel "
                         f"(got {cfg})")
    twin = TorchDiT(cfg.patch, cfg.width, cfg.depth, cfg.heads, cfg.resolution,
                    cfg.num_classes)
    pos = dit.sincos_2d(cfg.width, cfg.resolution // cfg.patch).astype(onp.float32)
    return twin.from_numpy(params, pos), meta


def export(weights, out):
    """Write the twin of ``weights`` to ``out`` (``torch.save`` of its ``state_dict`` with the
    model kind, config, prediction target and noise schedule). Returns the twin."""
    twin, meta = to_torch(weights)
    torch.save({"state_dict": twin.state_dict(), "model": meta["model"],
                "config": meta["config"], "target": meta.get("target", "eps"),
                "schedule": meta.get("schedule", {"name": "linear", "T": 1000})}, out)
    return twin


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m minidiff.tools.torch_twins",
                                     description="Export a minidiff model file to PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="write a model file's PyTorch twin (torch.save)")
    ex.add_argument("weights", help="a minidiff model file (.npz)")
    ex.add_argument("out", help="the PyTorch file to write (.pt)")
    args = parser.parse_args(argv)
    twin = export(args.weights, args.out)
    print(f"{type(twin).__name__} with {sum(p.numel() for p in twin.parameters())} parameters "
          f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
