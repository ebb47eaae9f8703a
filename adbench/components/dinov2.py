"""A DINOv2 ViT (timm) whose position embeddings follow DINOv2's own resizing rule.

Why not timm's forward. DINOv2 checkpoints carry a 37x37 grid of patch position embeddings
(518 px, patch 14). At any other input size the grid is resized, and DINOv2 and timm do that
differently (facebookresearch/dinov2 ``b8931f7``, ``dinov2/models/vision_transformer.py``
``interpolate_pos_encoding``, l.180-212; timm 1.0 ``layers/pos_embed.py``
``resample_abs_pos_embed``):

* DINOv2: the patch grid, cast to float32, is resized by ``F.interpolate(mode="bicubic",
  antialias=False, scale_factor=((gh + 0.1) / M, (gw + 0.1) / M))`` with M = 37 (the 0.1 is
  ``interpolate_offset``, a "historical kludge" kept for backward compatibility); with a scale
  factor given, PyTorch maps output pixels back with that factor, so the values differ from a
  resize to ``size=(gh, gw)`` even though the output size is the same. At exactly the
  checkpoint's grid (37x37) the embeddings are used unchanged. The class token's embedding is
  never resized.
* timm: ``size=(gh, gw)`` with ``antialias=True``, once at model creation or per forward with
  ``dynamic_img_size``.

Methods that reproduce official DINOv2-based code (AnomalyDINO's ``dinov2_vits14`` from
torch.hub, whose hub constructor sets offset 0.1 and no antialias, ``hub/backbones.py``
l.18-61; Dinomaly's vendored copy with the same two settings) need the DINOv2 rule, so this
module builds the timm model (exact tag, e.g. ``vit_small_patch14_dinov2.lvd142m`` or
``vit_base_patch14_reg4_dinov2.lvd142m``) at its checkpoint size and runs the embedding itself:
patch projection, DINOv2-rule position embeddings, prefix tokens (class, then registers, which
get no position embedding in either code base), then timm's blocks and final norm. For ViT-S/14
at 448x672 this equals ``get_intermediate_layers(x)[0]`` of the official model (max |diff| 0.0
in float64 with the same random weights; research notes of issue 26, section 3.2).

Weights: the exact tag resolved by ``adbench.weights`` like every backbone (``--weights PATH``,
``$ADBENCH_WEIGHTS_DIR/<tag>.pth`` in timm's key layout, timm's download of that tag, random
only with ``--weights random`` or as a ``quick*`` profile's warned fallback). The official
``dinov2_vits14_pretrain.pth`` has timm's key names for the non-register models (its extra
``mask_token`` is ignored); register models need timm's conversion (not done here).

Random weights. timm initialises DINOv2's LayerScale to ``init_values=1e-5`` (the checkpoint
overwrites it), so with random weights every block adds only ~1e-5 of its output to the
residual stream: the final tokens are, to within that, ``LayerNorm(W * patch + pos)``, a random
linear projection of each 14x14 patch (plus its position embedding). ``RANDOM_WEIGHTS_NOTE`` says
so in the records of methods that use this module.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from adbench.weights import WeightsInfo, exact_tag, load_pretrained

#: DINOv2's ``interpolate_offset`` (hub constructors of the non-register models; Dinomaly)
DINOV2_OFFSET = 0.1

RANDOM_WEIGHTS_NOTE = (
    "random DINOv2 weights: timm initialises LayerScale to 1e-5, so the blocks barely change the "
    "tokens and the features are close to a random linear projection of each patch (plus its "
    "position embedding) after LayerNorm")


def interpolate_pos_encoding(patch_pos: torch.Tensor, grid: tuple[int, int], *, offset: float = DINOV2_OFFSET,
                             antialias: bool = False) -> torch.Tensor:
    """DINOv2's resize of the patch position embeddings ``[1, M*M, C]`` to ``grid`` (rows, cols):
    float32 bicubic ``F.interpolate`` with ``scale_factor=((rows + offset) / M, (cols + offset) / M)``
    (``size=grid`` when ``offset`` is 0), no antialiasing by default; the embeddings unchanged
    at ``grid == (M, M)``. Returns ``[1, rows*cols, C]`` in the input's dtype."""
    n, dim = patch_pos.shape[1], patch_pos.shape[2]
    side = int(math.sqrt(n))
    if side * side != n:
        raise ValueError(f"position embeddings of {n} patches are not a square grid")
    rows, cols = int(grid[0]), int(grid[1])
    if (rows, cols) == (side, side):
        return patch_pos
    square = patch_pos.float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
    if offset:
        kwargs = {"scale_factor": ((rows + offset) / side, (cols + offset) / side)}
    else:
        kwargs = {"size": (rows, cols)}
    out = F.interpolate(square, mode="bicubic", antialias=antialias, **kwargs)
    if tuple(out.shape[-2:]) != (rows, cols):
        raise ValueError(f"position-embedding resize gave {tuple(out.shape[-2:])}, not {(rows, cols)}")
    return out.permute(0, 2, 3, 1).reshape(1, rows * cols, dim).to(patch_pos.dtype)


class DinoV2(nn.Module):
    """A frozen timm DINOv2 ViT with DINOv2's position-embedding rule (module docstring).

    ``patch_tokens(images)`` takes images in [0, 1] ([B, 3, H, W]), normalises them with the
    tag's ``pretrained_cfg`` (ImageNet mean/std for DINOv2), crops them from the top left to a
    multiple of the patch size (AnomalyDINO's crop) and returns the last block's tokens after the
    final LayerNorm without the class and register tokens, ``[B, gh*gw, C]``, with the grid.
    ``embed(x)`` (normalised, cropped input) returns the token sequence that enters block 0.
    """

    def __init__(self, model_name: str, *, weights: Optional[str] = None, allow_random_fallback: bool = False,
                 offset: float = DINOV2_OFFSET, antialias: bool = False):
        super().__init__()
        import timm  # lazily: timm imports torchvision

        self.model_name = exact_tag(model_name)
        self.model = timm.create_model(self.model_name, pretrained=False)
        if getattr(self.model, "pos_embed", None) is None or not hasattr(self.model, "blocks"):
            raise ValueError(f"{self.model_name} is not a ViT with absolute position embeddings")
        self.offset, self.antialias = float(offset), bool(antialias)
        self.patch_size = int(self.model.patch_embed.patch_size[0])
        self.embed_dim = int(self.model.embed_dim)
        self.num_prefix_tokens = int(self.model.num_prefix_tokens)
        cfg = getattr(self.model, "pretrained_cfg", None) or {}
        mean, std = cfg.get("mean", (0.485, 0.456, 0.406)), cfg.get("std", (0.229, 0.224, 0.225))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.weights: WeightsInfo = load_pretrained(
            self.model, self.model_name, weights, allow_random_fallback=allow_random_fallback,
            full_model_factory=lambda: timm.create_model(self.model_name, pretrained=True))
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.eval()

    def train(self, mode: bool = True) -> "DinoV2":
        super().train(mode)
        self.model.eval()  # frozen: dropout / drop-path stay off
        return self

    # --- geometry and embeddings ---------------------------------------------------------------
    def grid(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid of an input of ``height`` x ``width`` after the top-left crop."""
        return height // self.patch_size, width // self.patch_size

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        """Top-left crop to a multiple of the patch size (AnomalyDINO ``prepare_image``)."""
        rows, cols = self.grid(*x.shape[-2:])
        if rows < 1 or cols < 1:
            raise ValueError(f"input {tuple(x.shape[-2:])} is smaller than one {self.patch_size}-pixel patch")
        return x[..., : rows * self.patch_size, : cols * self.patch_size]

    def patch_position_embeddings(self, grid: tuple[int, int]) -> torch.Tensor:
        """Patch position embeddings for ``grid``, resized by the DINOv2 rule: [1, gh*gw, C]."""
        pos = self.model.pos_embed
        patch_pos = pos if self.model.no_embed_class else pos[:, self.num_prefix_tokens :]
        return interpolate_pos_encoding(patch_pos, grid, offset=self.offset, antialias=self.antialias)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised input [B, 3, H, W] (H, W multiples of the patch) -> tokens entering block 0:
        class token (+ its position embedding), registers, patches (+ DINOv2-rule embeddings)."""
        model = self.model
        tokens = model.patch_embed.norm(model.patch_embed.proj(x).flatten(2).transpose(1, 2))
        tokens = tokens + self.patch_position_embeddings(self.grid(*x.shape[-2:])).to(tokens.dtype)
        prefix = [model.cls_token]
        if getattr(model, "reg_token", None) is not None:
            prefix.append(model.reg_token)
        prefix = torch.cat(prefix, dim=1)
        if not model.no_embed_class:  # pos_embed's prefix slots (DINOv2: the class token's), never resized
            prefix = prefix + model.pos_embed[:, : self.num_prefix_tokens].float().to(prefix.dtype)
        prefix = prefix.to(tokens.dtype).expand(x.shape[0], -1, -1)
        return model.norm_pre(torch.cat([prefix, tokens], dim=1))

    @torch.no_grad()
    def block_outputs(self, images: torch.Tensor, layers: tuple[int, ...]) -> tuple[list[torch.Tensor], tuple[int, int]]:
        """Images in [0, 1] -> (the full token sequences [B, prefix + gh*gw, C] leaving each block
        in ``layers`` (0-based, no final norm; Dinomaly's encoder features), (gh, gw)). Blocks
        after the last requested one are not run."""
        x = self.crop((images - self.mean) / self.std)
        grid, wanted, out = self.grid(*x.shape[-2:]), set(int(i) for i in layers), []
        tokens = self.embed(x)
        for i, block in enumerate(self.model.blocks[: max(wanted) + 1]):
            tokens = block(tokens)
            if i in wanted:
                out.append(tokens)
        return out, grid

    @torch.no_grad()
    def patch_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Images in [0, 1] -> (last block's normed patch tokens [B, gh*gw, C], (gh, gw))."""
        x = self.crop((images - self.mean) / self.std)
        tokens = self.model.norm(self.model.blocks(self.embed(x)))
        return tokens[:, self.num_prefix_tokens :], self.grid(*x.shape[-2:])
