"""Write a PNG grid of synthetic anomalies (like CutPaste figs. 2 and 5, seed 000 fig. 3).

Rows are source images, columns generators; the changed region is outlined in red in a
second copy of each row, so what the mask claims can be checked by eye.

    python scripts/synth_gallery.py --images ../shared/data/mvtec_ad/bottle/train/good \\
        --out gallery.png --rows 3 --size 256

Without ``--images`` the rows are procedural textures.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from adbench.components import synth as S
from adbench.data import is_image_file, load_rgb


def generators(other: torch.Tensor, textures: S.TextureSource):
    return {
        "cutout (grey)": lambda x, g: S.cutout(x, g, fill="grey"),
        "cutout (mean)": lambda x, g: S.cutout(x, g, fill="mean"),
        "cutout (random)": lambda x, g: S.cutout(x, g, fill="random"),
        "scar (cutout)": lambda x, g: S.scar_cutout(x, g),
        "CutPaste": lambda x, g: S.cutpaste(x, g),
        "CutPaste-Scar": lambda x, g: S.cutpaste_scar(x, g),
        "CutPaste+pepper": lambda x, g: S.cutpaste(x, g, patch_transform="pepper"),
        "CutMix": lambda x, g: S.cutmix(x, other, g),
        "NSA (Poisson)": lambda x, g: S.nsa_patch(x, g, source=other),
        "Perlin texture": lambda x, g: S.perlin_texture_anomaly(x, textures.sample(tuple(x.shape[-2:]), g), g),
    }


def to_pil(x: torch.Tensor) -> Image.Image:
    return Image.fromarray((x.permute(1, 2, 0).numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8))


def outline(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.float()[None, None]
    grown = torch.nn.functional.max_pool2d(m, 5, 1, 2)[0, 0] > 0
    edge = grown & ~mask
    out = x.clone()
    out[:, edge] = torch.tensor([1.0, 0.0, 0.0])[:, None]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", default=None, help="folder of source images (default: procedural textures)")
    ap.add_argument("--texture-dir", default=None, help="anomaly-source textures for Perlin (default: procedural)")
    ap.add_argument("--out", default="synth_gallery.png")
    ap.add_argument("--rows", type=int, default=2)
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    size = (args.size, args.size)
    if args.images:
        files = sorted(p for p in Path(args.images).rglob("*") if is_image_file(p))
        picks = rng.choice(len(files), args.rows + 1, replace=False)
        imgs = [torch.from_numpy(np.asarray(load_rgb(files[i]).resize(size), np.float32) / 255).permute(2, 0, 1) for i in picks]
    else:
        imgs = [S.procedural_texture(size, rng) for _ in range(args.rows + 1)]
    other, rows = imgs[0], imgs[1:]
    gens = generators(other, S.TextureSource(args.texture_dir))
    label_h, pad = 18, 4
    cols = 1 + len(gens)
    w = cols * (args.size + pad)
    h = 2 * len(rows) * (args.size + pad) + label_h
    canvas = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(canvas)
    for c, name in enumerate(["normal"] + list(gens)):
        draw.text((c * (args.size + pad) + 2, 2), name, fill="black")
    for r, img in enumerate(rows):
        y0 = label_h + 2 * r * (args.size + pad)
        canvas.paste(to_pil(img), (0, y0))
        canvas.paste(to_pil(img), (0, y0 + args.size + pad))
        for c, fn in enumerate(gens.values(), start=1):
            out, mask = fn(img, rng)
            x0 = c * (args.size + pad)
            canvas.paste(to_pil(out), (x0, y0))
            canvas.paste(to_pil(outline(out, mask)), (x0, y0 + args.size + pad))
    canvas.save(args.out)
    print(f"wrote {args.out} ({w}x{h})")


if __name__ == "__main__":
    main()
