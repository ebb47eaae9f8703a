"""Training step time of adbench vs anomalib 2.7.0 for DRAEM, Reverse Distillation and FastFlow.

What it measures. Wall milliseconds of one training step, on the CPU, of the same model in two
implementations: adbench's (``methods/draem.py``, ``methods/reverse_distillation.py``,
``methods/fastflow.py``) and anomalib 2.7.0's torch models
(``anomalib.models.image.{draem,reverse_distillation,fastflow}.torch_model``). One step is
forward + loss + backward + optimiser step, each side with its own loss and optimiser:

* DRAEM: reconstructive + discriminative sub-networks (widths 128 / 64), L2 + SSIM + focal loss,
  Adam lr 1e-4 over both networks. adbench: ``DRAEM.training_loss`` (its ``adbench.components
  .losses``); anomalib: ``DraemModel`` + ``DraemLoss`` (kornia SSIM and focal) and Adam 1e-4
  over ``model.parameters()`` as its ``configure_optimizers``.
* Reverse Distillation: frozen wide_resnet50_2 teacher (layers 1-3), one-class bottleneck +
  reverse-ResNet student decoder, cosine loss on flattened maps (both sides' default), Adam
  lr 0.005 on bottleneck + decoder (betas: adbench (0.5, 0.999), anomalib (0.5, 0.99)).
* FastFlow: frozen feature extractor (layers 1-3) + trainable layer norms + 8-step 2D flows
  (alternating 3x3 / 1x1 subnets, hidden ratio 1.0, clamp 2), NLL loss, Adam lr 1e-3, weight
  decay 1e-5.

What is made equal, and which way a difference was resolved (the table prints this too):

* Threads: ``torch.set_num_threads(--threads)`` (and OMP/MKL_NUM_THREADS) in both workers.
* Batch and input size: ``--batch-size`` (8) and ``--image-size`` (256) on both sides; inputs
  are uniform [0, 1] images from one seed, saved once and loaded by both workers.
* DRAEM's synthetic anomalies are made OUT of the timed step, once, by adbench's
  ``DRAEMAnomalySampler`` (procedural textures; anomalib's generator would need DTD), and the
  same (normal, augmented, mask) batch is fed to both sides: the comparison is of the model
  step. anomalib's Lightning loop, its pre-processor (ImageNet normalisation) and adbench's
  checkpointing/progress bookkeeping are not timed; adbench's Backbone normalises inside its
  forward (one element-wise op, negligible next to the CNN).
* Backbones: adbench's ``paper`` profiles use wide_resnet50_2 for RD and FastFlow. anomalib's
  RD default is wide_resnet50_2 too; its FastFlow default is resnet18, so anomalib's
  FastflowModel is built with ``backbone="wide_resnet50_2"`` (``--fastflow-backbone resnet18``
  sets both sides to resnet18 instead). ``conv3x3_only`` is False on both sides (anomalib's
  default, adbench's paper profile).
* Reverse Distillation's one-class embedding: anomalib builds its OCBE bottleneck blocks with
  torchvision's default ``width_per_group=64`` (inner width 1/4 of the output), adbench's
  ``paper`` profile follows the official RD4AD code (``width_per_group=128``, 1/2). adbench is
  run with ``oce_inner_ratio=0.25`` (its ``miad`` profile's value, anomalib's layout) so both
  build the same network. The output's ``params_with_grad`` (parameters the step trained) are
  then equal; anomalib's OCBE also holds ``conv4``/``bn4`` (8.4 M parameters, defined but
  unused in the official code's forward as well), so its ``trainable_params`` is larger.
* Weights are random on both sides: anomalib's backbones are built with ``pre_trained=False``
  (timm ``pretrained=False``), adbench's with ``--weights random`` semantics
  (``RunContext(weights="random")``). This machine cannot download pretrained weights, and
  it does not matter for step time: the dense convolutions, matrix products and Adam updates
  of a step cost the same whatever the weights' values.

Where each value comes from: ms/step = mean over ``--steps`` timed steps (after ``--warmup``
untimed ones) of ``time.perf_counter`` around one step; spread = standard deviation, and
min/median/all are in the JSON. ratio = adbench ms / anomalib ms (< 1: adbench is faster).
cpu ms/step and the cpu ratio use ``time.process_time`` (CPU time of all the worker's threads)
over the same steps, and each side records the 1-minute load average before and after its
timed steps: when other work shares the cores, wall time inflates and the cpu ratio is the
steadier one. Torch version, thread count, parameter counts and the anomalib version are read
inside each worker.

anomalib is NOT a dependency of adbench. The script keeps it in its own virtualenv,
``${ADBENCH_BENCH_VENV:-~/.cache/adbench-bench/anomalib-2.7.0}``, created on first use with
``python -m venv`` and ``pip install anomalib==2.7.0``. That venv sees the current
interpreter's site-packages through a ``.pth`` file (appended after its own site-packages), so
both sides import the very same torch, timm, FrEIA and kornia; pip installs only what is
missing into the new venv (never into adbench's; a torch constraint stops it from adding
another torch) and the script checks that adbench's venv lists the same packages before and
after. (``--system-site-packages`` would expose the base interpreter, not adbench's venv.) If
the venv cannot be made or anomalib cannot be installed, it exits with code 2 and one line.

Run (from the repository root, adbench's environment active):

    python benchmarks/bench_vs_anomalib.py [--threads N] [--batch-size 8] [--image-size 256]
        [--steps 3] [--warmup 1] [--methods draem,reverse_distillation,fastflow]

Output: progress on stderr; on stdout a table per method, and as the LAST line one JSON object
with per-method numbers and ratios. Numbers are wall time: on a shared machine other load
inflates both sides, which is why the two sides of a method run back to back in one run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ANOMALIB_VERSION = "2.7.0"
METHODS = ("draem", "reverse_distillation", "fastflow")
REPO = Path(__file__).resolve().parents[1]
DEFAULT_VENV = Path.home() / ".cache" / "adbench-bench" / f"anomalib-{ANOMALIB_VERSION}"
PTH_NAME = "_adbench_parent_site.pth"


class SetupError(RuntimeError):
    """The anomalib venv could not be made or filled (exit code 2)."""


# ============================================================================================
# Worker side (runs in either interpreter; imports torch and one implementation only)
# ============================================================================================
def time_steps(step, warmup: int, steps: int) -> dict:
    """Run ``warmup`` untimed and ``steps`` timed calls of ``step``; milliseconds per step."""
    for _ in range(warmup):
        step()
    load_before = os.getloadavg()[0]
    times, cpu = [], []
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        times.append((time.perf_counter() - t0) * 1000.0)
        cpu.append((time.process_time() - c0) * 1000.0)
    return {
        "ms_mean": statistics.fmean(times),
        "ms_std": statistics.stdev(times) if len(times) > 1 else 0.0,
        "ms_min": min(times),
        "ms_median": statistics.median(times),
        "ms_all": [round(t, 1) for t in times],
        # CPU seconds of this process (all its threads) per step: what the step costs, much
        # less inflated than wall time when other processes share the cores
        "cpu_ms_mean": statistics.fmean(cpu),
        "load_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def optimiser_step(loss_fn, optimizer):
    """The step both sides time: zero grads, forward + loss, backward, optimiser step."""

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        optimizer.step()
        return loss

    return step


def trainable(params) -> int:
    return sum(p.numel() for p in params if p.requires_grad)


def import_adbench() -> None:
    """Make ``adbench`` and ``adbench.methods`` importable from this checkout, installed or not
    (the repository's ``cli.py`` maps ``methods/`` to ``adbench.methods`` on import)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import importlib

    importlib.import_module("cli")


def adbench_step(method: str, inputs: dict, opts: dict):
    """adbench's own training pieces (what its ``fit`` calls per batch) for ``method``."""
    import torch

    import_adbench()
    from adbench.config import resolve_config
    from adbench.detector import RunContext
    from adbench.registry import METHODS as REGISTRY

    cls = REGISTRY.get(method)
    size, batch = opts["image_size"], opts["batch_size"]
    overrides = {"image_size": size, "batch_size": batch}
    if method == "reverse_distillation":
        overrides["oce_inner_ratio"] = 0.25  # anomalib's OCBE layout (module docstring)
    if method == "fastflow":
        overrides["backbone"] = FASTFLOW_TAGS[opts["fastflow_backbone"]]
        overrides["conv3x3_only"] = False
    cfg = resolve_config(cls.Config, cls.PROFILES, "paper", overrides)
    det = cls(cfg, RunContext(weights="random"))  # --weights random: no download
    info = {"config": {k: getattr(cfg, k) for k in ("backbone", "oce_inner_ratio", "loss", "conv3x3_only",
                                                     "recon_width", "disc_width", "lr") if hasattr(cfg, k)}}
    if method == "draem":
        nets = [det.reconstructive, det.discriminative]
        params = [p for n in nets for p in n.parameters()]
        for n in nets:
            n.train()
        optimizer = torch.optim.Adam(params, lr=cfg.lr)
        normal, augmented, mask = inputs["normal"], inputs["augmented"], inputs["mask"]
        loss_fn = lambda: det.training_loss(normal, augmented, mask)  # noqa: E731
    elif method == "reverse_distillation":
        from adbench.methods.reverse_distillation import distillation_loss

        params = list(det.bottleneck.parameters()) + list(det.student.parameters())
        optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
        det.teacher.eval()
        det.bottleneck.train()
        det.student.train()
        images = inputs["images"]

        def loss_fn():
            feats = det._teacher(images)
            return distillation_loss(feats, det._student(feats), cfg.loss)
    else:
        from adbench.methods.fastflow import flow_nll

        params = list(det.norms.parameters()) + list(det.flows.parameters())
        optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        det.backbone.eval()
        det.norms.train()
        det.flows.train()
        images = inputs["images"]
        loss_fn = lambda: flow_nll(*det._flow(det._features(images)))  # noqa: E731
    info["trainable_params"] = trainable(params)
    info["weights"] = det.weights_info().tag if method != "draem" else "n/a (no pretrained part)"
    return optimiser_step(loss_fn, optimizer), info, params


FASTFLOW_TAGS = {"wide_resnet50_2": "wide_resnet50_2.racm_in1k", "resnet18": "resnet18.tv_in1k"}


def anomalib_step(method: str, inputs: dict, opts: dict):
    """anomalib 2.7.0's torch model, loss and optimiser settings (its ``configure_optimizers``)."""
    import torch

    size = (opts["image_size"], opts["image_size"])
    if method == "draem":
        from anomalib.models.image.draem.loss import DraemLoss
        from anomalib.models.image.draem.torch_model import DraemModel

        model = DraemModel(sspcab=False).train()
        criterion = DraemLoss()
        params = list(model.parameters())
        optimizer = torch.optim.Adam(params, lr=0.0001)
        normal, augmented, mask = inputs["normal"], inputs["augmented"], inputs["mask"][:, None].float()

        def loss_fn():
            reconstruction, prediction = model(augmented)
            return criterion(normal, reconstruction, mask, prediction)
        info = {"config": {"sspcab": False}}
    elif method == "reverse_distillation":
        from anomalib.models.image.reverse_distillation.loss import ReverseDistillationLoss
        from anomalib.models.image.reverse_distillation.torch_model import ReverseDistillationModel

        model = ReverseDistillationModel(backbone="wide_resnet50_2", input_size=size,
                                         layers=["layer1", "layer2", "layer3"], anomaly_map_mode="add",
                                         pre_trained=False).train()
        criterion = ReverseDistillationLoss()
        params = list(model.decoder.parameters()) + list(model.bottleneck.parameters())
        optimizer = torch.optim.Adam(params, lr=0.005, betas=(0.5, 0.99))
        images = inputs["images"]
        loss_fn = lambda: criterion(*model(images))  # noqa: E731
        info = {"config": {"backbone": "wide_resnet50_2", "layers": [1, 2, 3], "pre_trained": False}}
    else:
        from anomalib.models.image.fastflow.loss import FastflowLoss
        from anomalib.models.image.fastflow.torch_model import FastflowModel

        backbone = opts["fastflow_backbone"]
        model = FastflowModel(input_size=size, backbone=backbone, pre_trained=False, flow_steps=8,
                              conv3x3_only=False, hidden_ratio=1.0).train()
        criterion = FastflowLoss()
        params = list(model.parameters())
        optimizer = torch.optim.Adam(params, lr=0.001, weight_decay=0.00001)
        images = inputs["images"]
        loss_fn = lambda: criterion(*model(images))  # noqa: E731
        info = {"config": {"backbone": backbone, "conv3x3_only": False, "pre_trained": False}}
    info["trainable_params"] = trainable(params)
    info["weights"] = "random (pre_trained=False)" if method != "draem" else "n/a (no pretrained part)"
    return optimiser_step(loss_fn, optimizer), info, params


def worker_main(args) -> None:
    """Build one side's step, time it, print one JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    inputs = torch.load(args.inputs)
    opts = {"image_size": args.image_size, "batch_size": args.batch_size,
            "fastflow_backbone": args.fastflow_backbone}
    build = adbench_step if args.worker == "adbench" else anomalib_step
    step, info, params = build(args.method, inputs, opts)
    result = time_steps(step, args.warmup, args.steps)
    # parameters the step actually trained (anomalib's RD bottleneck also holds conv4/bn4, unused
    # in its forward as in the official code: trainable but never given a gradient)
    info["params_with_grad"] = sum(p.numel() for p in params if p.grad is not None)
    versions = {"torch": torch.__version__, "torch_file": torch.__file__}
    if args.worker == "anomalib":
        import anomalib

        versions["anomalib"] = anomalib.__version__
    print(json.dumps({**result, **info, **versions, "threads": torch.get_num_threads(),
                      "python": sys.executable}))


# ============================================================================================
# Parent side: the anomalib venv, shared inputs, the two workers, the table
# ============================================================================================
def parent_site_dirs() -> list[str]:
    """adbench's interpreter's site-packages (purelib, platlib), for the anomalib venv's .pth."""
    paths = sysconfig.get_paths()
    return list(dict.fromkeys([paths["purelib"], paths["platlib"]]))


def installed_packages(dirs: list[str]) -> dict[str, str]:
    """name -> version of every distribution installed in ``dirs`` (adbench's venv)."""
    from importlib.metadata import distributions

    return {(d.metadata["Name"] or "").lower(): d.version for d in distributions(path=dirs)}


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def run_quiet(cmd: list, what: str) -> str:
    """Run a setup command; on failure raise SetupError with its last output line."""
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1]
        raise SetupError(f"{what} failed (exit {proc.returncode}): {tail}")
    return proc.stdout


def anomalib_version(python: Path) -> str | None:
    code = "import importlib.metadata as m; print(m.version('anomalib'))"
    proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def link_parent_site(python: Path) -> None:
    """(Re)write the .pth that appends adbench's site-packages to the venv's sys.path."""
    site = run_quiet([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     "reading the anomalib venv's site-packages").strip()
    Path(site, PTH_NAME).write_text("\n".join(parent_site_dirs()) + "\n")


def ensure_anomalib_venv(venv: Path) -> Path:
    """The venv's python with anomalib==2.7.0 importable; creates/installs on first use."""
    python = venv_python(venv)
    if not python.exists():
        log(f"creating venv {venv}")
        venv.parent.mkdir(parents=True, exist_ok=True)
        run_quiet([sys.executable, "-m", "venv", venv], "python -m venv")
    link_parent_site(python)
    if anomalib_version(python) == ANOMALIB_VERSION:
        return python
    from importlib.metadata import version

    before = installed_packages(parent_site_dirs())
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:  # never a second torch
        f.write(f"torch=={version('torch')}\ntorchvision=={version('torchvision')}\n")
        constraints = f.name
    log(f"pip install anomalib=={ANOMALIB_VERSION} into {venv} (first run: a few minutes)")
    try:
        run_quiet([python, "-m", "pip", "install", "--disable-pip-version-check", "-q", "-c", constraints,
                   f"anomalib=={ANOMALIB_VERSION}"], f"pip install anomalib=={ANOMALIB_VERSION}")
    finally:
        os.unlink(constraints)
    after = installed_packages(parent_site_dirs())
    if before != after:
        changed = sorted(set(before.items()) ^ set(after.items()))
        raise SetupError(f"installing anomalib changed adbench's venv ({changed[:5]}); aborting")
    if anomalib_version(python) != ANOMALIB_VERSION:
        raise SetupError(f"anomalib=={ANOMALIB_VERSION} is not importable in {venv} after pip install")
    return python


def make_inputs(path: Path, batch: int, size: int, methods: list[str]) -> None:
    """Uniform [0, 1] images (seed 0) and, for DRAEM, one pre-made synthetic-anomaly batch."""
    import numpy as np
    import torch

    images = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    inputs = {"images": images}
    if "draem" in methods:
        import_adbench()
        from adbench.components.synth import TextureSource
        from adbench.methods.draem import DRAEMAnomalySampler

        sampler = DRAEMAnomalySampler(TextureSource(None), anomaly_prob=1.0, rotate_prob=0.0)
        uint8 = (images * 255).round().to(torch.uint8)
        inputs["normal"], inputs["augmented"], inputs["mask"] = sampler.batch(uint8, np.random.default_rng(0))
    torch.save(inputs, path)


def run_worker(python: Path, side: str, method: str, args, inputs: Path) -> dict:
    """One side of one method in a fresh process; returns its JSON line."""
    cmd = [str(python), str(Path(__file__).resolve()), "--worker", side, "--method", method,
           "--inputs", str(inputs), "--threads", str(args.threads), "--batch-size", str(args.batch_size),
           "--image-size", str(args.image_size), "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--fastflow-backbone", args.fastflow_backbone]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    env.pop("PYTHONPATH", None)
    # anomalib runs outside the repo so that nothing of adbench is importable from its cwd
    cwd = REPO if side == "adbench" else inputs.parent
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stderr[-4000:])
        raise RuntimeError(f"{side} worker for {method} failed (exit {proc.returncode})")
    return json.loads(lines[-1])


def log(msg: str) -> None:
    print(f"[bench_vs_anomalib] {msg}", file=sys.stderr, flush=True)


def print_table(method: str, ours: dict, theirs: dict, note: str) -> None:
    print(f"\n{method}  ({note})")
    print(f"  {'side':<9} {'ms/step':>10} {'std':>8} {'min':>10} {'cpu ms/step':>12} {'params trained':>15}  "
          f"{'torch':<14} {'threads':>7}  load 1-min")
    for side, r in (("adbench", ours), ("anomalib", theirs)):
        print(f"  {side:<9} {r['ms_mean']:>10.1f} {r['ms_std']:>8.1f} {r['ms_min']:>10.1f} {r['cpu_ms_mean']:>12.1f} "
              f"{r['params_with_grad']:>15,}  {r['torch']:<14} {r['threads']:>7}  {r['load_1min']}")
    print(f"  ratio adbench/anomalib: wall {ours['ms_mean'] / theirs['ms_mean']:.3f}, "
          f"cpu {ours['cpu_ms_mean'] / theirs['cpu_ms_mean']:.3f}")


NOTES = {
    "draem": "recon width 128, disc width 64; same pre-made anomaly batch on both sides",
    "reverse_distillation": "teacher wide_resnet50_2 layers 1-3, OCBE width_per_group 64 on both "
                            "(adbench oce_inner_ratio=0.25)",
    "fastflow": "extractor {bb} layers 1-3 on both (anomalib default is resnet18), 8 steps, 3x3/1x1",
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads on both sides")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=3, help="timed steps per side (after --warmup)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--methods", default=",".join(METHODS), help="comma list of " + ", ".join(METHODS))
    p.add_argument("--fastflow-backbone", choices=sorted(FASTFLOW_TAGS), default="wide_resnet50_2")
    p.add_argument("--venv", type=Path,
                   default=Path(os.environ.get("ADBENCH_BENCH_VENV", DEFAULT_VENV)).expanduser(),
                   help="anomalib's separate venv (default $ADBENCH_BENCH_VENV or %(default)s)")
    # internal: worker mode
    p.add_argument("--worker", choices=("adbench", "anomalib"), help=argparse.SUPPRESS)
    p.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)
    p.add_argument("--inputs", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.method_list = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in args.method_list if m not in METHODS]
    if bad:
        p.error(f"unknown method(s) {bad}; choose from {', '.join(METHODS)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker_main(args)
        return 0
    try:
        anomalib_python = ensure_anomalib_venv(args.venv)
    except (SetupError, OSError) as exc:
        print(f"bench_vs_anomalib: cannot set up anomalib {ANOMALIB_VERSION} venv at {args.venv}: {exc}")
        return 2
    log(f"threads {args.threads}, batch {args.batch_size}, image {args.image_size}, "
        f"warmup {args.warmup}, steps {args.steps}")
    summary = {"threads": args.threads, "batch_size": args.batch_size, "image_size": args.image_size,
               "warmup": args.warmup, "steps": args.steps, "fastflow_backbone": args.fastflow_backbone,
               "load_before": os.getloadavg()[0], "methods": {}}
    with tempfile.TemporaryDirectory(prefix="bench_vs_anomalib_") as tmp:
        inputs = Path(tmp, "inputs.pt")
        make_inputs(inputs, args.batch_size, args.image_size, args.method_list)
        for method in args.method_list:
            log(f"{method}: adbench side")
            ours = run_worker(Path(sys.executable), "adbench", method, args, inputs)
            log(f"{method}: anomalib side")
            theirs = run_worker(anomalib_python, "anomalib", method, args, inputs)
            print_table(method, ours, theirs, NOTES[method].format(bb=args.fastflow_backbone))
            summary["methods"][method] = {
                "adbench": ours, "anomalib": theirs, "ratio_adbench_over_anomalib": ours["ms_mean"] / theirs["ms_mean"],
                "cpu_ratio_adbench_over_anomalib": ours["cpu_ms_mean"] / theirs["cpu_ms_mean"],
            }
            summary.setdefault("torch", {"adbench": ours["torch"], "anomalib": theirs["torch"]})
            summary.setdefault("anomalib_version", theirs.get("anomalib"))
    summary["load_after"] = os.getloadavg()[0]
    sys.stdout.flush()
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
