"""The TWLV-I video encoder exported by twlv-jax, in self-contained PyTorch.

    model = AutoModel.from_pretrained(DIR, trust_remote_code=True)
    out = model(pixel_values)          # (B, T, C, H, W), normalised as preprocessing.json says
    out.last_hidden_state              # (B, N, D) tokens ordered (t, h, w), after the final norm
    out.pooler_output                  # (B, D) their mean: the clip embedding

Positions are computed (float64, then float32) as twlv-jax computes them; they are not
parameters. Sin-cos tables (pos_embed sincos3d | sincos1d) are added for the config's grid,
so H, W and T must equal the config's; 3-D rotary positions (rope3d, V-JEPA 2's) rotate
queries and keys by each token's (frame, row, column) of the input's own grid, so any size
divisible into tubelets is taken.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .configuration_twlv import TwlvVideoConfig


def sincos_1d(dim, positions):
    """(len(positions), dim): sines in the first half, cosines after."""
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    angles = np.outer(np.asarray(positions, np.float64), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_3d(dim, grid):
    """Separable t/h/w table (T, H, W, dim): 2 * ceil(dim / 6) channels per axis, cut to dim."""
    t, h, w = grid
    part = 2 * math.ceil(dim / 6)
    emb_t = sincos_1d(part, np.arange(t))[:, None, None, :]
    emb_h = sincos_1d(part, np.arange(h))[None, :, None, :]
    emb_w = sincos_1d(part, np.arange(w))[None, None, :, :]
    full = np.concatenate(np.broadcast_arrays(emb_t, emb_h, emb_w), axis=-1)
    return full[..., :dim].astype(np.float32)


def sincos_flat(dim, grid):
    """VideoMAE's table over the flattened tokens, sin/cos interleaved: (T, H, W, dim)."""
    n = math.prod(grid)
    exponents = 2 * (np.arange(dim) // 2) / dim
    angles = np.arange(n, dtype=np.float64)[:, None] / np.power(10000, exponents)[None, :]
    table = angles.copy()
    table[:, 0::2] = np.sin(angles[:, 0::2])
    table[:, 1::2] = np.cos(angles[:, 1::2])
    return table.reshape(*grid, dim).astype(np.float32)


TABLES = {"sincos3d": sincos_3d, "sincos1d": sincos_flat}


def rope_tables(grid, head_dim):
    """(2, N, head_dim) cos and sin per token and channel, as twlv_jax.models.rope.tables.

    Runs of 2 * ((head_dim // 3) // 2) channels for frame, row and column; in a run of d,
    channel c turns at 10000^(-(c mod d/2) / (d/2)) (V-JEPA 2's tiled frequencies); the
    channels after the three runs keep cos 1, sin 0.
    """
    d = 2 * ((head_dim // 3) // 2)
    omega = 1.0 / 10000.0 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
    t, h, w = grid
    positions = np.stack(np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij"),
                         axis=-1).reshape(-1, 3).astype(np.float64)
    angles = positions[:, :, None] * omega
    angles = np.concatenate([angles, angles], axis=-1).reshape(len(positions), 3 * d)
    cos = np.ones((len(positions), head_dim))
    sin = np.zeros((len(positions), head_dim))
    cos[:, :3 * d], sin[:, :3 * d] = np.cos(angles), np.sin(angles)
    return np.stack([cos, sin]).astype(np.float32)


def rotate(x, rope):
    """x (B, H, N, Dh) with adjacent channel pairs turned by rope (2, N, Dh)."""
    pairs = x.unflatten(-1, (-1, 2))
    turned = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
    return x * rope[0] + turned * rope[1]


class PatchEmbed(nn.Module):
    def __init__(self, config):
        super().__init__()
        size = (config.tubelet_size, config.patch_size, config.patch_size)
        self.proj = nn.Conv3d(config.num_channels, config.hidden_size, size, stride=size)

    def forward(self, pixel_values):
        x = self.proj(pixel_values.permute(0, 2, 1, 3, 4))       # (B, D, T', H', W')
        return x.flatten(2).transpose(1, 2)                       # (B, N, D)


class Attention(nn.Module):
    def __init__(self, config):
        super().__init__()
        dim = config.hidden_size
        self.heads = config.num_attention_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=config.qkv_bias == "all")
        if config.qkv_bias == "qv":
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = self.v_bias = None
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, rope=None):
        b, n, d = x.shape
        qkv = self.qkv(x)
        if self.q_bias is not None:
            qkv = qkv + torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        q, k, v = qkv.reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if rope is not None:
            q, k = rotate(q, rope), rotate(k, rope)
        y = F.scaled_dot_product_attention(q, k, v)               # (B, H, N, Dh)
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        dim, eps = config.hidden_size, config.layer_norm_eps
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(config)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(config)
        if config.layerscale:
            self.gamma_1 = nn.Parameter(torch.ones(dim))
            self.gamma_2 = nn.Parameter(torch.ones(dim))
        else:
            self.gamma_1 = self.gamma_2 = None

    def forward(self, x, rope=None):
        h = self.attn(self.norm1(x), rope)
        x = x + (h if self.gamma_1 is None else h * self.gamma_1)
        h = self.mlp(self.norm2(x))
        return x + (h if self.gamma_2 is None else h * self.gamma_2)


class TwlvVideoModel(PreTrainedModel):
    config_class = TwlvVideoConfig
    base_model_prefix = "twlv"
    main_input_name = "pixel_values"

    def __init__(self, config):
        super().__init__(config)
        self.patch_embed = PatchEmbed(config)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.num_hidden_layers)])
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def forward(self, pixel_values, **kwargs):
        c = self.config
        _, t, _, h, w = pixel_values.shape
        grid = (t // c.tubelet_size, h // c.patch_size, w // c.patch_size)
        x = self.patch_embed(pixel_values)
        rope = None
        if c.pos_embed == "rope3d":
            if t % c.tubelet_size or h % c.patch_size or w % c.patch_size:
                raise ValueError(f"input of {t} frames at {h}x{w} does not split into "
                                 f"{c.tubelet_size}x{c.patch_size}x{c.patch_size} tubelets")
            head_dim = c.hidden_size // c.num_attention_heads
            rope = torch.from_numpy(rope_tables(grid, head_dim)).to(device=x.device, dtype=x.dtype)
        elif (t, h, w) != (c.num_frames, c.image_size, c.image_size):
            raise ValueError(f"input of {t} frames at {h}x{w}; the model takes {c.num_frames} "
                             f"frames at {c.image_size}x{c.image_size}")
        else:
            table = TABLES[c.pos_embed](c.hidden_size, grid).reshape(-1, c.hidden_size)
            x = x + torch.from_numpy(table).to(device=x.device, dtype=x.dtype)
        for block in self.blocks:
            x = block(x, rope)
        tokens = self.norm(x)
        return BaseModelOutputWithPooling(last_hidden_state=tokens, pooler_output=tokens.mean(1))
