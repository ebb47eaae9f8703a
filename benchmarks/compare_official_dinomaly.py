"""Equality check: adbench's ``dinomaly`` against the official Dinomaly code, same random weights.

Why: ``methods/dinomaly.py`` re-implements github.com/guojiajeremy/Dinomaly (``c5c76d0``) without
copying it. This script imports the official code from a checkout, gives both sides the SAME fully
random weights (DINOv2 encoder: every tensor random, LayerScale gammas and LayerNorm weights
~ N(1, 0.1); bottleneck/decoder: every weight AND bias random, not the official init, so that a
wrong name mapping cannot hide behind zeros) and compares at 392 px, batch 2, in float64 and float32:
1. encoder features, blocks 2..9 (class + 4 registers + patches): ``det.encoder.block_outputs`` vs
   ``encoder.prepare_tokens`` + blocks (with ``--dinov2``: also upstream DINOv2 vs the vendored copy);
2. the groups ``en, de`` of ``ViTill.forward`` vs ``det.groups``, eval mode (dropout off);
3. maps/scores: ``cal_anomaly_maps(en, de, 392)`` -> bilinear 256 -> ``get_gaussian_kernel(5, 4)`` ->
   mean of the top 655 values (``utils.evaluation_batch``) vs ``det.score_maps``;
4. ``global_cosine_hm_percent(en, de, p, 0.1)`` vs ``det.training_loss`` at iteration 500 (p = 0.45)
   and every trainable tensor's gradient (checks the hard-mining hook): TRAIN mode, with
   ``torch.manual_seed`` right before each forward (the bottleneck's 3 dropouts draw the same masks);
5. ``--steps`` training steps from iteration 0 (train mode, same seed per step): loss, lr, params
   and param updates after clip_grad_norm 0.1 + StableAdamW + scheduler (official built as in
   ``dinomaly_mvtec_uni.py``:165-168, ours ``det.make_optimizer()``; two categories in the context
   select adbench's unified protocol, 10000 iterations and eps 1e-10, as the ``uni`` script).
Inputs: random images01 in [0, 1]; the official gets ``(images01 - mean) / std`` computed with
adbench's own mean/std buffers, i.e. exactly the tensor DinoV2 normalises to inside. In float64,
``Dinomaly.encode``'s cast of the images to float32 is bypassed on the instance (nothing else).

"rel" = max|ours - official| / max|official| per tensor (element-wise relative errors mean nothing
where values cross zero). Tolerances: float64 1e-10, float32 1e-4, with two justified exceptions:
(a) float32 param updates (p_after - p_before, ~lr = 2e-5): one float32 ulp of a parameter near 1
(LayerNorm weights) is 1.2e-7, i.e. 0.6 % of an update, and Adam divides each gradient element by
its own RMS, so an element whose gradient is near float32 rounding noise gets an O(1) relative
error in its update while the gradients agree to ~1e-6 of their scale; the max line is information
only, the verdict is ||diff||_2 / ||official||_2 over all updates (float64 keeps the max check).
(An earlier adbench built the map's Gaussian kernel in float64 and rounded it, one float32 ulp
from the official kernel, which this script found: 4.5e-8 relative on maps and scores in float64.
The kernel is now computed in float32 in the official order, so the check is strict.)
Exit status 1 on any FAIL.

Official checkout (``fetch`` github:guojiajeremy/Dinomaly gives a git mirror; same for dinov2):
    git -C /work/.mirror/guojiajeremy+Dinomaly/repo archive c5c76d0 | tar -x -C /tmp/off/Dinomaly
Run: python benchmarks/compare_official_dinomaly.py --official /tmp/off/Dinomaly [--dinov2 /tmp/off/dinov2]

Patched to run the official code offline on CPU (no file of the checkout is edited):
* ``ptflops``, ``skimage.measure``, ``colorama`` are stubbed in ``sys.modules`` when missing (module-level
  imports of the training scripts, ``utils.py`` (AUPRO) and ``optimizers/ACProp.py``; unused here);
* ``models/vit_encoder.py`` makes ``backbones/weights`` relative to the CWD on import, and ``load()``
  reads ``dinov2_vitb14_reg4_pretrain.pth`` from there (downloading only when missing): import and
  load run in a temporary directory under /tmp holding the random state dict (331 MB, deleted
  right after loading; the directory is removed at exit);
* the ``dinomaly_*.py`` scripts are not imported (``train()`` reads argparse globals and picks
  ``cuda:1``): the model and the loop body are rebuilt from their lines 130-189, on the CPU.
"""
from __future__ import annotations

import argparse
import copy
import os
import shutil
import sys
import tempfile
import types
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

TARGET, GROUPS = (2, 3, 4, 5, 6, 7, 8, 9), [[0, 1, 2, 3], [4, 5, 6, 7]]
DINOV2_ARGS = dict(patch_size=14, img_size=518, block_chunks=0, init_values=1e-8, num_register_tokens=4,
                   interpolate_antialias=False, interpolate_offset=0.1)  # models/vit_encoder.py:37-42


def import_official(path: str) -> types.SimpleNamespace:
    """The official pieces, imported from ``path`` (module docstring: stubs, temporary CWD)."""
    for name in ("ptflops", "skimage", "colorama"):
        try:
            __import__(name)
        except ImportError:
            stub = sys.modules[name] = types.ModuleType(name)
            stub.measure, stub.get_model_complexity_info = types.SimpleNamespace(), None
            stub.Fore = stub.Back = stub.Style = types.SimpleNamespace()
    sys.path.insert(0, os.path.abspath(path))
    work, cwd = tempfile.mkdtemp(prefix="dinomaly_official_", dir="/tmp"), os.getcwd()
    os.chdir(work)  # vit_encoder makes backbones/weights here on import
    try:
        from dinov2.models import vision_transformer as dinov2_vit
        from models import vit_encoder
        from models.uad import ViTill
        from models.vision_transformer import Block, LinearAttention2, bMlp
        from optimizers import StableAdamW
        import utils
    finally:
        os.chdir(cwd)
    return types.SimpleNamespace(work=work, dinov2_vit=dinov2_vit, vit_encoder=vit_encoder, ViTill=ViTill, Block=Block,
                                 LinearAttention2=LinearAttention2, bMlp=bMlp, StableAdamW=StableAdamW, utils=utils)


def random_dinov2_state(vit_module, seed: int = 0) -> dict:
    """A DINOv2-format ViT-B/14 reg4 state dict (float32): gammas and LayerNorm weights ~ N(1, 0.1),
    every other tensor ~ N(0, 0.05^2)."""
    torch.manual_seed(seed)
    sd = {k: v.clone() for k, v in vit_module.vit_base(**DINOV2_ARGS).state_dict().items()}
    for k, v in sd.items():
        v.copy_(1 + 0.1 * torch.randn_like(v) if "gamma" in k or (k.endswith("weight") and v.ndim == 1)
                else 0.05 * torch.randn_like(v))
    return sd


def build_official(off, sd: dict, seed: int = 1):
    """ViTill as ``dinomaly_mvtec_uni.py``:130-158, encoder from ``vit_encoder.load`` reading ``sd``;
    then every bottleneck/decoder tensor randomised. Returns (model, trainable)."""
    path = os.path.join(off.work, "backbones", "weights", "dinov2_vitb14_reg4_pretrain.pth")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(sd, path)
    cwd = os.getcwd()
    os.chdir(off.work)
    try:
        encoder = off.vit_encoder.load("dinov2reg_vit_base_14")
    finally:
        os.chdir(cwd)
        os.remove(path)
    loaded = encoder.state_dict()  # load_state_dict(strict=False) would hide a key mismatch
    assert all(torch.equal(loaded[k], v) for k, v in sd.items()), "official encoder did not load every tensor"
    bottleneck = nn.ModuleList([off.bMlp(768, 3072, 768, drop=0.2)])
    decoder = nn.ModuleList([off.Block(dim=768, num_heads=12, mlp_ratio=4., qkv_bias=True, attn=off.LinearAttention2,
                                       norm_layer=partial(nn.LayerNorm, eps=1e-8)) for _ in range(8)])
    model = off.ViTill(encoder=encoder, bottleneck=bottleneck, decoder=decoder, target_layers=list(TARGET),
                       mask_neighbor_size=0, fuse_layer_encoder=GROUPS, fuse_layer_decoder=GROUPS)
    trainable = nn.ModuleList([bottleneck, decoder])
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in trainable.named_parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in name and name.endswith("weight")
                    else 0.02 * torch.randn_like(p))
    return model, trainable


def ours_name(name: str) -> str:
    """Official trainable tensor name (in ``ModuleList([bottleneck, decoder])``) -> adbench's."""
    part, rest = name.split(".", 1)
    if part == "0":  # "0.0.fc1.weight": bottleneck ModuleList entry 0
        return "bottleneck." + rest.split(".", 1)[1]
    return "decoder." + rest.replace("mlp.fc1", "mlp.0").replace("mlp.fc2", "mlp.2")


def build_ours(sd: dict, trainable: nn.Module, dtype: torch.dtype):
    """adbench's detector (paper profile, unified protocol) holding the same weights, in ``dtype``."""
    from timm.models.vision_transformer import checkpoint_filter_fn
    from adbench.config import resolve_config
    from adbench.dataset import CategoryInfo
    from adbench.detector import RunContext
    from adbench.registry import METHODS

    cls = METHODS.get("dinomaly")
    cfg = resolve_config(cls.Config, cls.PROFILES, "paper", {}, method="dinomaly")
    context = RunContext(seed=0, weights="random", profile="paper", categories={c: CategoryInfo(c) for c in "ab"})
    det = cls(cfg, context)
    det.encoder.to(dtype)  # timm's conversion folds pos_embed[:, 0] into cls_token: done in float64 (exact)
    det.encoder.model.load_state_dict(checkpoint_filter_fn({k: v.double() for k, v in sd.items()}, det.encoder.model))
    det.reconstructor.load_state_dict({ours_name(k): v for k, v in trainable.state_dict().items()}, strict=True)
    det.reconstructor.to(dtype)
    if dtype == torch.float64:  # Dinomaly.encode casts images to float32: skip that one cast
        det.encode = lambda images: det.encoder.block_outputs(images, det.config.target_layers)
    return det


def official_optimizer(off, trainable):
    """``dinomaly_mvtec_uni.py``:165-168 (unified)."""
    opt = off.StableAdamW([{"params": trainable.parameters()}], lr=2e-3, betas=(0.9, 0.999), weight_decay=1e-4,
                          amsgrad=True, eps=1e-10)
    return opt, off.utils.WarmCosineScheduler(opt, base_value=2e-3, final_value=2e-4, total_iters=10000,
                                              warmup_iters=100)


def official_step(off, model, trainable, opt, sch, x, it: int):
    """The official loop body, ``dinomaly_mvtec_uni.py``:176-189 (``clip_grad_norm`` is the old alias)."""
    en, de = model(x)
    loss = off.utils.global_cosine_hm_percent(en, de, p=min(0.9 * it / 1000, 0.9), factor=0.1)
    opt.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(trainable.parameters(), max_norm=0.1)
    opt.step()
    sch.step()
    return loss.detach()


def ours_step(det, opt, sch, images01, it: int):
    """``Dinomaly.fit``'s loop body."""
    loss = det.training_loss(images01, it)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(list(det.reconstructor.parameters()), det.config.grad_clip)
    opt.step()
    sch.step()
    return loss.detach()


class Report:
    def __init__(self):
        self.failed = []

    def __call__(self, tag, name, ours, official, tol) -> None:
        ours, official = torch.as_tensor(ours).double(), torch.as_tensor(official).double()
        d, scale = (ours - official).abs().max().item(), official.abs().max().item()
        rel = d / scale if scale > 0 else d
        ok = tol is None or rel <= tol
        verdict = "(information)" if tol is None else f"tol {tol:.0e} {'PASS' if ok else 'FAIL'}"
        print(f"{tag:7s} {name:50s} max|diff| {d:8.2e} max|off| {scale:8.2e} rel {rel:8.2e} {verdict}", flush=True)
        if not ok:
            self.failed.append(f"{tag} {name}")

    def many(self, tag, name, pairs: dict, tol) -> None:
        """The worst tensor of a set (by rel), named by its official name."""
        worst = max(pairs, key=lambda k: ((pairs[k][0] - pairs[k][1]).abs().max()
                                          / pairs[k][1].abs().max().clamp_min(1e-300)).item())
        self(tag, f"{name} ({len(pairs)}, worst {worst})", *pairs[worst], tol)


def official_maps(utils, en, de, size: int):
    """``evaluation_batch`` (utils.py:347-390, max_ratio=0.01, resize_mask=256) on one batch."""
    amap = F.interpolate(utils.cal_anomaly_maps(en, de, size)[0], size=256, mode="bilinear", align_corners=False)
    amap = utils.get_gaussian_kernel(kernel_size=5, sigma=4).to(amap.dtype)(amap)
    flat = amap.flatten(1)
    return torch.sort(flat, dim=1, descending=True)[0][:, :int(flat.shape[1] * 0.01)].mean(dim=1), amap


def run(off, sd, model32, trainable32, images01, dtype, steps, report, upstream=None):
    tag, tol = str(dtype).replace("torch.", ""), (1e-10 if dtype == torch.float64 else 1e-4)
    model = copy.deepcopy(model32).to(dtype)
    trainable = nn.ModuleList([model.bottleneck, model.decoder])
    det, img = build_ours(sd, trainable32, dtype), images01.to(dtype)
    x = (img - det.encoder.mean) / det.encoder.std  # the official input = what DinoV2 computes inside
    with torch.no_grad():  # 1. encoder features
        ours, _ = det.encoder.block_outputs(img, TARGET)
        t, theirs = model.encoder.prepare_tokens(x), []
        for i, block in enumerate(model.encoder.blocks[: TARGET[-1] + 1]):
            t = block(t)
            theirs += [t] if i in TARGET else []
        for i, a, b in zip(TARGET, ours, theirs):
            report(tag, f"encoder block {i} tokens {tuple(b.shape)}", a, b, tol)
        if upstream is not None:
            up = upstream.vit_base(**DINOV2_ARGS)
            up.load_state_dict(sd, strict=True)
            u = up.to(dtype).eval().prepare_tokens_with_masks(x)
            for block in up.blocks[: TARGET[-1] + 1]:
                u = block(u)
            report(tag, "upstream DINOv2 vs official vendored, block 9", u, theirs[-1], tol)
        model.eval(), det.reconstructor.eval()  # 2. groups, eval mode
        en, de = model(x)
        e2, d2 = det.groups(img)
        for g in range(len(GROUPS)):
            report(tag, f"encoder group {g} {tuple(en[g].shape)} (eval)", e2[g], en[g], tol)
            report(tag, f"decoder group {g} {tuple(de[g].shape)} (eval)", d2[g], de[g], tol)
        scores, maps = det.score_maps(img)  # 3. maps and scores, eval mode
        s_off, m_off = official_maps(off.utils, en, de, img.shape[-1])
    report(tag, f"maps {tuple(m_off.shape)}", maps, m_off, tol)
    report(tag, "scores", scores, s_off, tol)
    model.train(), det.reconstructor.train()  # 4. loss + gradients, train mode, same dropout seed
    it = 500
    torch.manual_seed(1234)
    en, de = model(x)
    loss_off = off.utils.global_cosine_hm_percent(en, de, p=min(0.9 * it / 1000, 0.9), factor=0.1)
    loss_off.backward()
    torch.manual_seed(1234)
    loss_ours = det.training_loss(img, it)
    loss_ours.backward()
    report(tag, f"loss at iteration {it} (train, same seed)", loss_ours.detach(), loss_off.detach(), tol)
    params = dict(det.reconstructor.named_parameters())
    named = {k: (params[ours_name(k)], p) for k, p in trainable.named_parameters()}
    report.many(tag, "grads after backward", {k: (a.grad, b.grad) for k, (a, b) in named.items()}, tol)
    (opt_off, sch_off), (opt_ours, sch_ours) = official_optimizer(off, trainable), det.make_optimizer()
    for it in range(steps):  # 5. training steps from iteration 0
        before = {k: (a.detach().clone(), b.detach().clone()) for k, (a, b) in named.items()}
        torch.manual_seed(100 + it)
        loss_off = official_step(off, model, trainable, opt_off, sch_off, x, it)
        torch.manual_seed(100 + it)
        loss_ours = ours_step(det, opt_ours, sch_ours, img, it)
        report(tag, f"step {it}: loss", loss_ours, loss_off, tol)
        report(tag, f"step {it}: lr for the next step", opt_ours.param_groups[0]["lr"],
               float(opt_off.param_groups[0]["lr"]), tol)
        report.many(tag, f"step {it}: params", {k: (a.detach(), b.detach()) for k, (a, b) in named.items()}, tol)
        updates = {k: (a.detach() - before[k][0], b.detach() - before[k][1]) for k, (a, b) in named.items()}
        report.many(tag, f"step {it}: updates", updates, tol if dtype == torch.float64 else None)
        if dtype != torch.float64:  # exception (a) of the module docstring
            diff, norm = (torch.cat([t.flatten() for t in ts]).norm().item()
                          for ts in ([a - b for a, b in updates.values()], [b for _, b in updates.values()]))
            ok = diff <= tol * norm
            print(f"{tag:7s} {f'step {it}: updates, L2 norms':50s} ||diff|| {diff:8.2e} ||off|| {norm:8.2e} "
                  f"rel {diff / max(norm, 1e-300):8.2e} tol {tol:.0e} {'PASS' if ok else 'FAIL'}", flush=True)
            report.failed += [] if ok else [f"{tag} step {it}: updates L2"]


def import_upstream(path: str):
    """Upstream DINOv2's ``vision_transformer`` (also a package ``dinov2``: swapped through sys.modules)."""
    own = {k: sys.modules.pop(k) for k in list(sys.modules) if k.split(".")[0] == "dinov2"}
    sys.path.insert(0, os.path.abspath(path))
    try:
        from dinov2.models import vision_transformer as upstream
    finally:
        sys.path.remove(os.path.abspath(path))
        for k in [k for k in sys.modules if k.split(".")[0] == "dinov2"]:
            del sys.modules[k]
        sys.modules.update(own)
    return upstream


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", required=True, help="checkout of guojiajeremy/Dinomaly (c5c76d0)")
    parser.add_argument("--dinov2", help="optional checkout of facebookresearch/dinov2 (extra encoder check)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=392, help="input side (already resized and cropped)")
    parser.add_argument("--steps", type=int, default=3, help="training steps from iteration 0")
    parser.add_argument("--dtypes", default="float64,float32")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    off = import_official(args.official)
    upstream = import_upstream(args.dinov2) if args.dinov2 else None
    try:
        sd = random_dinov2_state(off.dinov2_vit)
        model32, trainable32 = build_official(off, sd)
        images01 = torch.rand(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(7),
                              dtype=torch.float64)
        print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}, "
              f"{args.size}x{args.size}, official {os.path.abspath(args.official)}", flush=True)
        report = Report()
        for name in args.dtypes.split(","):
            run(off, sd, model32, trainable32, images01, getattr(torch, name), args.steps, report, upstream)
    finally:
        shutil.rmtree(off.work, ignore_errors=True)
    print("ALL PASS" if not report.failed else "FAILED: " + "; ".join(report.failed))
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
