"""Dinomaly's trained parts: the noisy MLP bottleneck and the linear-attention decoder, and the
grouping of encoder and decoder layers (Guo et al., "Dinomaly: The Less Is More Philosophy in
Multi-Class Unsupervised Anomaly Detection", CVPR 2025, arXiv 2405.14325; official code
github.com/guojiajeremy/Dinomaly at ``c5c76d0``, cited as file:line).

* **Noisy bottleneck** (``models/vision_transformer.py`` ``bMlp``, l.67-87, built with
  ``drop=0.2`` at ``dinomaly_mvtec_uni.py``:136): dropout on its input, Linear 768 -> 3072, GELU,
  dropout, Linear 3072 -> 768, dropout. The dropout *is* the noise: it stops the decoder from
  learning an identity mapping, so an unseen (anomalous) pattern is not reconstructed.
* **Linear-attention decoder** (``Block`` l.279-301 with ``LinearAttention2`` l.248-276;
  ``dinomaly_mvtec_uni.py``:143-147): 8 pre-norm blocks (LayerNorm eps 1e-8, qkv bias, MLP ratio 4,
  no LayerScale, no dropout), attention with the ELU + 1 feature map of Katharopoulos et al.
  (2020): ``softmax(q k^T) v`` replaced by ``phi(q) (phi(k)^T v) / (phi(q) sum_s phi(k_s))``. The
  paper's point: linear attention cannot focus sharply, so it does not copy a patch from its
  own position (no "identity shortcut").
* **Loose reconstruction** (``models/uad.py`` ``ViTill.forward``, l.38-80): the encoder's
  blocks 2..9 are averaged into the bottleneck's input (all 8, the full token sequence with the
  class and register tokens); the decoder's 8 outputs are reversed (last block first) and, like
  the encoder's, averaged in two groups of four; group ``g`` of the decoder reconstructs group
  ``g`` of the encoder (encoder blocks 2-5 <- decoder blocks 8-5, encoder blocks 6-9 <- decoder
  blocks 4-1). Only the patch tokens are compared, as maps ``[B, C, gh, gw]``.
* **Initialisation** (``dinomaly_mvtec_uni.py``:151-158): every Linear weight truncated normal
  (std 0.01, cut at +-0.03), biases 0, LayerNorm weight 1 and bias 0, bottleneck first, then the
  decoder blocks in order.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class NoisyBottleneck(nn.Module):
    """``bMlp``: dropout -> Linear -> GELU -> dropout -> Linear -> dropout."""

    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(self.drop(x))))))


class LinearAttention(nn.Module):
    """Multi-head linear attention with the ELU + 1 feature map (``LinearAttention2``)."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = F.elu(qkv[0]) + 1.0, F.elu(qkv[1]) + 1.0, qkv[2]  # [B, heads, N, d]
        kv = k.transpose(-2, -1) @ v  # [B, heads, d, d]: sum over tokens of phi(k) v^T
        normaliser = 1.0 / (q @ k.sum(dim=-2).unsqueeze(-1))  # [B, heads, N, 1]
        out = (q @ kv) * normaliser
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class DecoderBlock(nn.Module):
    """Pre-norm transformer block with linear attention (``Block`` with ``LinearAttention2``)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, norm_eps: float = 1e-8):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = LinearAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def mean_of(tensors: list[torch.Tensor]) -> torch.Tensor:
    """``fuse_feature``: the element-wise mean of equally shaped tensors (stacked, then averaged)."""
    return torch.stack(tensors, dim=1).mean(dim=1)


class Reconstructor(nn.Module):
    """Bottleneck + decoder, and the grouping that pairs them with the encoder (module docstring).

    ``forward(encoder_layers, prefix, grid)`` takes the encoder's token sequences of the target
    layers (``[B, prefix + gh*gw, C]`` each, in layer order) and returns the encoder and decoder
    groups as maps ``[B, C, gh, gw]``."""

    def __init__(self, dim: int, heads: int, *, decoder_blocks: int = 8, bottleneck_dropout: float = 0.2,
                 encoder_groups=((0, 1, 2, 3), (4, 5, 6, 7)), decoder_groups=((0, 1, 2, 3), (4, 5, 6, 7)),
                 norm_eps: float = 1e-8, mlp_ratio: float = 4.0):
        super().__init__()
        if len(encoder_groups) != len(decoder_groups):
            raise ValueError(f"{len(encoder_groups)} encoder groups but {len(decoder_groups)} decoder groups")
        self.encoder_groups = tuple(tuple(int(i) for i in g) for g in encoder_groups)
        self.decoder_groups = tuple(tuple(int(i) for i in g) for g in decoder_groups)
        if any(i >= decoder_blocks or i < 0 for g in self.decoder_groups for i in g):
            raise ValueError(f"decoder groups {self.decoder_groups} name blocks outside 0..{decoder_blocks - 1}")
        self.bottleneck = NoisyBottleneck(dim, int(dim * mlp_ratio), bottleneck_dropout)
        self.decoder = nn.ModuleList(DecoderBlock(dim, heads, mlp_ratio, norm_eps) for _ in range(decoder_blocks))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Official initialisation (module docstring), in module order."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.01, a=-0.03, b=0.03)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, encoder_layers: list[torch.Tensor], prefix: int, grid: tuple[int, int]):
        if any(i >= len(encoder_layers) for g in self.encoder_groups for i in g):
            raise ValueError(f"encoder groups {self.encoder_groups} need more than {len(encoder_layers)} layers")
        x = self.bottleneck(mean_of(encoder_layers))
        decoded = []
        for block in self.decoder:
            x = block(x)
            decoded.append(x)
        decoded = decoded[::-1]
        encoder = [mean_of([encoder_layers[i] for i in g]) for g in self.encoder_groups]
        decoder = [mean_of([decoded[i] for i in g]) for g in self.decoder_groups]
        return [as_map(t, prefix, grid) for t in encoder], [as_map(t, prefix, grid) for t in decoder]


def as_map(tokens: torch.Tensor, prefix: int, grid: tuple[int, int]) -> torch.Tensor:
    """Patch tokens of ``[B, prefix + gh*gw, C]`` as a contiguous ``[B, C, gh, gw]`` map."""
    patches = tokens[:, prefix:, :]
    return patches.permute(0, 2, 1).reshape(tokens.shape[0], -1, *grid).contiguous()
