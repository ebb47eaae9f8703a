"""UniAD's feature-reconstruction transformer (You et al., NeurIPS 2022, section 3).

Why a separate module: the method file (methods/uniad.py) reads like the paper's pipeline
(features -> reconstruction -> L2 map); the transformer itself is about 200 lines of layers and
would drown it. Nothing here is tied to a backbone or a dataset.

The three ideas of the paper that stop a transformer from learning an identity shortcut:

* **Layer-wise query embedding** (paper 3.2): every decoder layer starts from its own learned
  query (one vector per grid position), attends first to the encoder output and then to the
  previous decoder layer's output. The features themselves never enter as queries, so copying
  them through is not free.
* **Neighbour-masked attention** (paper 3.3): a query at grid cell (i, j) may not attend to keys
  inside the ``k x k`` window around (i, j) (7 x 7 in the official config), so it cannot simply
  look up its own (or nearly its own) input. The official code masks every attention: encoder
  self-attention and both decoder attentions (``mask: [True, True, True]``). The mask is
  boolean (True = blocked), so blocked weights are exactly 0 after the softmax.
* **Feature jittering** (paper 3.4): during training only, Gaussian noise
  ``eps * alpha * ||f|| / C`` is added to every input token (alpha = 20, probability 1 in the
  official config), and the target stays the clean features: the model learns to denoise.

Layout follows the official code (DETR-style post-norm layers; positional embeddings added to
queries and keys, not to values; dropout 0.1; feed-forward 1024; final LayerNorm after the
decoder; learned positional embedding of a row half and a column half, initialised U(0, 1);
Xavier-uniform linear weights with zero biases). Tokens are batch-first here.
"""
from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


def neighbour_mask(height: int, width: int, size: int | tuple[int, int]) -> torch.Tensor:
    """Boolean [H*W, H*W] attention mask, True where a query may NOT attend.

    Query (i, j) is blocked from every key (i', j') with |i - i'| <= kh // 2 and
    |j - j'| <= kw // 2 (the window is clipped at the borders). ``size`` 0 or (0, 0): no mask.
    """
    kh, kw = (size, size) if isinstance(size, int) else size
    rows = torch.arange(height).repeat_interleave(width)
    cols = torch.arange(width).repeat(height)
    near_rows = (rows[:, None] - rows[None, :]).abs() <= kh // 2
    near_cols = (cols[:, None] - cols[None, :]).abs() <= kw // 2
    blocked = near_rows & near_cols
    if kh <= 0 or kw <= 0:
        blocked = torch.zeros_like(blocked)
    return blocked


def add_feature_jitter(tokens: torch.Tensor, scale: float) -> torch.Tensor:
    """Paper eq. (4): tokens [B, N, C] + N(0, 1) * scale * ||token||_2 / C, per token."""
    if scale <= 0:
        return tokens
    norms = tokens.norm(dim=-1, keepdim=True) / tokens.shape[-1]
    return tokens + torch.randn_like(tokens) * norms * scale


class LearnedPositionEmbedding(nn.Module):
    """Absolute 2-D embedding: first half of the channels from the column, second from the row."""

    def __init__(self, height: int, width: int, dim: int):
        super().__init__()
        self.height, self.width = height, width
        self.col_embed = nn.Parameter(torch.rand(width, dim // 2))
        self.row_embed = nn.Parameter(torch.rand(height, dim - dim // 2))

    def forward(self) -> torch.Tensor:
        cols = self.col_embed[None, :, :].expand(self.height, -1, -1)
        rows = self.row_embed[:, None, :].expand(-1, self.width, -1)
        return torch.cat([cols, rows], dim=-1).reshape(self.height * self.width, -1)  # [N, D]


class RecordingAttention(nn.Module):
    """Multi-head attention that can keep its last attention weights (for tests and plots).

    With ``record = True`` the per-head weights [B, heads, N_q, N_k] of the last call are kept in
    ``last_weights``; otherwise PyTorch's fused path runs and nothing is stored.
    """

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.record = False
        self.last_weights: Optional[torch.Tensor] = None

    def forward(self, query, key, value, mask: Optional[torch.Tensor]) -> torch.Tensor:
        out, weights = self.attn(
            query, key, value, attn_mask=mask, need_weights=self.record, average_attn_weights=False
        )
        self.last_weights = weights.detach() if self.record else None
        return out


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.dropout(F.relu(self.linear1(x))))


class EncoderLayer(nn.Module):
    """Post-norm self-attention + feed-forward; positions added to queries and keys."""

    def __init__(self, dim: int, heads: int, ff: int, dropout: float):
        super().__init__()
        self.self_attn = RecordingAttention(dim, heads, dropout)
        self.ff = FeedForward(dim, ff, dropout)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop1, self.drop2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        qk = x + pos
        x = self.norm1(x + self.drop1(self.self_attn(qk, qk, x, mask)))
        return self.norm2(x + self.drop2(self.ff(x)))


class DecoderLayer(nn.Module):
    """Layer-wise learned query -> attend to encoder memory -> attend to previous layer output."""

    def __init__(self, dim: int, num_queries: int, heads: int, ff: int, dropout: float):
        super().__init__()
        self.query = nn.Parameter(torch.randn(num_queries, dim))  # nn.Embedding's N(0, 1) init
        self.memory_attn = RecordingAttention(dim, heads, dropout)
        self.previous_attn = RecordingAttention(dim, heads, dropout)
        self.ff = FeedForward(dim, ff, dropout)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop1, self.drop2, self.drop3 = nn.Dropout(dropout), nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, previous, memory, pos, mask_memory, mask_previous) -> torch.Tensor:
        q = self.query.unsqueeze(0).expand(memory.shape[0], -1, -1)
        q = self.norm1(q + self.drop1(self.memory_attn(q + pos, memory + pos, memory, mask_memory)))
        q = self.norm2(q + self.drop2(self.previous_attn(q + pos, previous + pos, previous, mask_previous)))
        return self.norm3(q + self.drop3(self.ff(q)))


class ReconstructionTransformer(nn.Module):
    """Aligned features [B, C, H, W] -> reconstructed features [B, C, H, W].

    Input projection C -> ``dim`` (a 1x1 convolution, written as a linear map on tokens), 
    ``encoder_layers`` encoder and ``decoder_layers`` decoder layers with neighbour masks, output
    projection back to C. Jitter is applied to the un-projected tokens in training mode only.
    """

    def __init__(
        self,
        in_channels: int,
        grid: tuple[int, int],
        *,
        dim: int = 256,
        heads: int = 8,
        encoder_layers: int = 4,
        decoder_layers: int = 4,
        ff_dim: int = 1024,
        dropout: float = 0.1,
        neighbour_size: int = 7,
        mask_attention: tuple[bool, bool, bool] = (True, True, True),
        jitter_scale: float = 20.0,
    ):
        super().__init__()
        self.grid = tuple(grid)
        self.jitter_scale = float(jitter_scale)
        num_queries = grid[0] * grid[1]
        self.input_proj = nn.Linear(in_channels, dim)
        self.output_proj = nn.Linear(dim, in_channels)
        self.pos_embed = LearnedPositionEmbedding(grid[0], grid[1], dim)
        enc = EncoderLayer(dim, heads, ff_dim, dropout)
        dec = DecoderLayer(dim, num_queries, heads, ff_dim, dropout)
        self.encoder = nn.ModuleList(copy.deepcopy(enc) for _ in range(encoder_layers))
        self.decoder = nn.ModuleList(copy.deepcopy(dec) for _ in range(decoder_layers))
        self.decoder_norm = nn.LayerNorm(dim)
        self.mask_attention = tuple(bool(m) for m in mask_attention)
        self.register_buffer("mask", neighbour_mask(grid[0], grid[1], neighbour_size), persistent=False)
        self._init_weights()
        for layer in self.decoder:  # deep copies share one init: give each layer its own query
            nn.init.normal_(layer.query)

    def _init_weights(self) -> None:
        """Official initializer: Xavier-uniform weights and zero biases for every nn.Linear."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def attention_modules(self) -> list[RecordingAttention]:
        return [m for m in self.modules() if isinstance(m, RecordingAttention)]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        b, c, h, w = features.shape
        if (h, w) != self.grid:
            raise ValueError(f"feature grid {(h, w)} != the transformer's grid {self.grid}")
        tokens = features.flatten(2).transpose(1, 2)  # [B, N, C]
        if self.training:
            tokens = add_feature_jitter(tokens, self.jitter_scale)
        x = self.input_proj(tokens)
        pos = self.pos_embed().unsqueeze(0)
        enc_mask, mem_mask, prev_mask = (self.mask if m else None for m in self.mask_attention)
        for layer in self.encoder:
            x = layer(x, pos, enc_mask)
        memory, out = x, x
        for layer in self.decoder:
            out = layer(out, memory, pos, mem_mask, prev_mask)
        out = self.output_proj(self.decoder_norm(out))
        return out.transpose(1, 2).reshape(b, c, h, w)
