#!/usr/bin/env bash
# GPU checks, run on a lent GPU machine from the repository root (at most 7 minutes):
#
#   bash benchmarks/gpu_check.sh            # writes its log and records under $OUT (or /tmp)
#
# Part of issue 15 (checkpoints and parallel jobs):
# (run in the order 1, 4, 5, 2, 3: what the input-pipeline issue needs first)
#   1. every trained method's quick profile on synthetic data with --device cuda;
#   2. one kill -9 and resume on the GPU (DRAEM, --checkpoint-every 5): resumed_from is set;
#   3. --jobs 2 on one GPU: both jobs' spans overlap and both records name the GPU.
# Part of issue 16 (input pipeline, precision):
#   4. every method's quick profile again under --precision bf16 (1. is fp32), GPU utilisation
#      sampled by nvidia-smi every 0.5 s during 1. and 4.;
#   5. benchmarks/gpu_steps.py: paper-profile ms per training step in fp32 and bf16, host
#      synchronisations per step (torch.cuda.set_sync_debug_mode("warn")), MIAD estimates.
#
# That machine has torch, timm and scikit-learn but not faiss, kornia or FrEIA: put their
# wheels in .gpu_wheels/ (ignored by git, carried with the run) beforehand, here:
#   pip download --no-deps -d .gpu_wheels faiss-cpu kornia kornia_rs FrEIA
# (Ray is not needed: the Ray executor is tested on the CPU.) ADBENCH_CHECK_DEVICE=cpu runs the
# same script on a CPU, to check the script itself.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)}
DEVICE=${ADBENCH_CHECK_DEVICE:-cuda}
CATEGORY=${ADBENCH_CHECK_CATEGORY:-chip}
METHODS=${ADBENCH_CHECK_METHODS:-draem,autoencoder,reverse_distillation,fastflow,uniad,cutpaste,cutpaste_patch,tocoad,patchcore}
export PYTHONUNBUFFERED=1
exec > >(tee "$OUT/gpu_check.log") 2>&1

PY=${PYTHON:-python3}  # the GPU machine's python3 is the one with torch
if compgen -G ".gpu_wheels/*.whl" > /dev/null; then  # into a folder of its own, not over its packages
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/adbench-site \
        .gpu_wheels/*.whl && export PYTHONPATH=/tmp/adbench-site${PYTHONPATH:+:$PYTHONPATH}
fi
# adbench itself (its methods/ folder is the package adbench.methods only once installed)
"$PY" -c "import adbench.methods" 2>/dev/null || \
    "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . > "$OUT/install.log" 2>&1 || \
    { echo "adbench install failed:"; tail -5 "$OUT/install.log"; }
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch, timm; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'timm', timm.__version__, 'gpus', torch.cuda.device_count())"
ADB=("$PY" cli.py run --dataset synthetic --category "$CATEGORY" --profile quick --device "$DEVICE" --quiet)

summary() {  # method, status, fit s, test s, image AUROC, gpu, threads, resumed_from
    "$PY" - "$1" <<'PY'
import json, sys, pathlib
for p in sorted(pathlib.Path(sys.argv[1]).rglob("*.json")):
    r = json.loads(p.read_text())
    m = r.get("metrics") or {}
    print(f"  {r['method']:22s} {r['status']:6s} fit {r.get('fit_seconds') or 0:7.1f} s  test {r.get('test_seconds') or 0:6.1f} s"
          f"  image AUROC {m.get('image_auroc') if m.get('image_auroc') is None else round(m['image_auroc'], 3)}"
          f"  {r.get('precision')} workers {(r.get('input_pipeline') or {}).get('workers')} knn {r.get('knn_device')}"
          f"  gpu {(r.get('gpu') or {}).get('name')} #{(r.get('gpu') or {}).get('index')}"
          f"  peak {r.get('peak_cuda_mb')} MB  resumed_from {r.get('resumed_from')}"
          f"  started {r.get('started')} finished {r.get('finished')}"
          + (f"  error: {r.get('error')}" if r['status'] != 'ok' else ""))
PY
}

utilisation() {  # start sampling into $1; prints the sampler's pid
    if command -v nvidia-smi > /dev/null && [ "$DEVICE" != cpu ]; then
        nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -lms 500 > "$1" 2>/dev/null &
        echo $!
    fi
}
utilisation_summary() {  # $1: samples file; mean and max GPU utilisation while jobs ran
    "$PY" - "$1" <<'PY'
import sys
rows = [l.split(",") for l in open(sys.argv[1]) if l.strip()]
u = [float(r[0]) for r in rows if r[0].strip().replace(".", "").isdigit()]
m = [float(r[1]) for r in rows if len(r) > 1 and r[1].strip().replace(".", "").isdigit()]
if u:
    busy = [x for x in u if x > 0]
    print(f"  GPU utilisation: {len(u)} samples, mean {sum(u) / len(u):.0f} %, mean while busy "
          f"{(sum(busy) / len(busy)) if busy else 0:.0f} %, max {max(u):.0f} %; memory max {max(m) if m else 0:.0f} MiB")
PY
}
JOBS=${ADBENCH_CHECK_JOBS:-4}

echo "== 1. quick profiles on $DEVICE, fp32, --jobs $JOBS: $METHODS"
t0=$SECONDS
sampler=$(utilisation "$OUT/util_fp32.csv")
timeout "${T_QUICK:-120}" "${ADB[@]}" --method "$METHODS" --jobs "$JOBS" --results "$OUT/quick" > "$OUT/quick.log" 2>&1
echo "  exit $? in $((SECONDS - t0)) s"
[ -n "${sampler:-}" ] && kill "$sampler" 2>/dev/null && utilisation_summary "$OUT/util_fp32.csv"
summary "$OUT/quick"

echo "== 4. quick profiles on $DEVICE, --precision bf16, --jobs $JOBS"
t0=$SECONDS
sampler=$(utilisation "$OUT/util_bf16.csv")
timeout "${T_QUICK:-120}" "${ADB[@]}" --method "$METHODS" --jobs "$JOBS" --precision bf16 --results "$OUT/quick_bf16" > "$OUT/quick_bf16.log" 2>&1
echo "  exit $? in $((SECONDS - t0)) s"
[ -n "${sampler:-}" ] && kill "$sampler" 2>/dev/null && utilisation_summary "$OUT/util_bf16.csv"
summary "$OUT/quick_bf16"

echo "== 5. paper-profile steps: ms/step fp32 and bf16, host syncs per step, MIAD estimates"
t0=$SECONDS
timeout "${T_STEPS:-130}" "$PY" benchmarks/gpu_steps.py --device "$DEVICE" ${ADBENCH_CHECK_STEPS_ARGS:-} 2>"$OUT/gpu_steps.err" | tee "$OUT/gpu_steps.log" | grep -v '^{'
tail -n 1 "$OUT/gpu_steps.log" > "$OUT/gpu_steps.json"
echo "  in $((SECONDS - t0)) s"
echo "== 2. kill -9 after the first checkpoint, then resume (draem, --checkpoint-every 5)"
setsid "${ADB[@]}" --method draem --results "$OUT/killed" --checkpoint-every 5 > "$OUT/killed1.log" 2>&1 &
pid=$!
for _ in $(seq 1 200); do
    if compgen -G "$OUT/killed/.checkpoints/*/*/*.ckpt.json" > /dev/null; then break; fi
    sleep 0.2
done
kill -9 -- "-$pid" 2>/dev/null; wait "$pid" 2>/dev/null
echo "  killed after a checkpoint: $(ls "$OUT"/killed/.checkpoints/*/*/ 2>/dev/null | tr '\n' ' ')"
timeout 60 "${ADB[@]}" --method draem --results "$OUT/killed" --checkpoint-every 5 > "$OUT/killed2.log" 2>&1
echo "  rerun exit $?: $(grep -m1 'resuming from checkpoint' "$OUT/killed2.log")"
summary "$OUT/killed"

echo "== 3. --jobs 2 on one GPU (reverse_distillation, fastflow)"
t0=$SECONDS
timeout 60 "${ADB[@]}" --method reverse_distillation,fastflow --jobs 2 --results "$OUT/jobs2" > "$OUT/jobs2.log" 2>&1
echo "  exit $? in $((SECONDS - t0)) s"
summary "$OUT/jobs2"
echo "== done; log in $OUT/gpu_check.log"
