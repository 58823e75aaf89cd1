"""The chapter 6 U-Net written again in PyTorch, layer for layer, for ``make bench`` only.

It mirrors ``minidiff/models/unet.py`` with its default ``UNetConfig`` (same blocks, channels,
AdaGN, attention at 7 x 7, skip concatenation, nearest up-sampling with a convolution, strided
convolution down-sampling) so that the two step times compare the same arithmetic. PyTorch is an
optional tool here, never a dependency: this module is imported only when it is installed.
"""

import math

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
