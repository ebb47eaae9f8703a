#!/usr/bin/env bash
# GPU checks, run on a lent GPU machine from the repository root (at most 7 minutes):
#
#   bash benchmarks/gpu_check.sh            # writes its log and records under $OUT (or /tmp)
#
# Part of issue 15 (checkpoints and parallel jobs):
#   1. every trained method's quick profile on synthetic data with --device cuda;
#   2. one kill -9 and resume on the GPU (DRAEM, --checkpoint-every 5): resumed_from is set;
#   3. --jobs 2 on one GPU: both jobs' spans overlap and both records name the GPU.
# The input-pipeline issue (16) appends its part (fp32/bf16, utilisation, host syncs) here.
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

if compgen -G ".gpu_wheels/*.whl" > /dev/null; then
    pip install -q --no-deps .gpu_wheels/*.whl
fi
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader || true
python -c "import torch, timm; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'timm', timm.__version__, 'gpus', torch.cuda.device_count())"
ADB=(python cli.py run --dataset synthetic --category "$CATEGORY" --profile quick --device "$DEVICE" --quiet)

summary() {  # method, status, fit s, test s, image AUROC, gpu, threads, resumed_from
    python - "$1" <<'PY'
import json, sys, pathlib
for p in sorted(pathlib.Path(sys.argv[1]).rglob("*.json")):
    r = json.loads(p.read_text())
    m = r.get("metrics") or {}
    print(f"  {r['method']:22s} {r['status']:6s} fit {r.get('fit_seconds') or 0:7.1f} s  test {r.get('test_seconds') or 0:6.1f} s"
          f"  image AUROC {m.get('image_auroc') if m.get('image_auroc') is None else round(m['image_auroc'], 3)}"
          f"  gpu {(r.get('gpu') or {}).get('name')} #{(r.get('gpu') or {}).get('index')}"
          f"  peak {r.get('peak_cuda_mb')} MB  resumed_from {r.get('resumed_from')}"
          f"  started {r.get('started')} finished {r.get('finished')}"
          + (f"  error: {r.get('error')}" if r['status'] != 'ok' else ""))
PY
}

echo "== 1. quick profiles on $DEVICE: $METHODS"
t0=$SECONDS
"${ADB[@]}" --method "$METHODS" --results "$OUT/quick" > "$OUT/quick.log" 2>&1
echo "  exit $? in $((SECONDS - t0)) s"
summary "$OUT/quick"

echo "== 2. kill -9 after the first checkpoint, then resume (draem, --checkpoint-every 5)"
setsid "${ADB[@]}" --method draem --results "$OUT/killed" --checkpoint-every 5 > "$OUT/killed1.log" 2>&1 &
pid=$!
for _ in $(seq 1 600); do
    if compgen -G "$OUT/killed/.checkpoints/*/*/*.ckpt.json" > /dev/null; then break; fi
    sleep 0.2
done
kill -9 -- "-$pid" 2>/dev/null; wait "$pid" 2>/dev/null
echo "  killed after a checkpoint: $(ls "$OUT"/killed/.checkpoints/*/*/ 2>/dev/null | tr '\n' ' ')"
"${ADB[@]}" --method draem --results "$OUT/killed" --checkpoint-every 5 > "$OUT/killed2.log" 2>&1
echo "  rerun exit $?: $(grep -m1 'resuming from checkpoint' "$OUT/killed2.log")"
summary "$OUT/killed"

echo "== 3. --jobs 2 on one GPU (reverse_distillation, fastflow)"
t0=$SECONDS
"${ADB[@]}" --method reverse_distillation,fastflow --jobs 2 --results "$OUT/jobs2" > "$OUT/jobs2.log" 2>&1
echo "  exit $? in $((SECONDS - t0)) s"
summary "$OUT/jobs2"
echo "== done; log in $OUT/gpu_check.log"
