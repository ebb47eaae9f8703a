#!/usr/bin/env bash
# Tier 2 of DESIGN.md: every method's `quick` profile on the real images in ../shared (MVTec AD
# bottle and Magnetic-tile), lite0 ImageNet weights, one seed. The records land in results/ and
# are what results/README.md, the tables and the closing notes quote.
#
#   bash benchmarks/real_data_quick.sh            # from the repository root
#   RESULTS=/tmp/r bash benchmarks/real_data_quick.sh
#
# Run it on an otherwise idle machine: the records keep wall times, and DESIGN.md's budgets
# (about 10 min per quick job on bottle, 20 on magnetic_tile, 2 cores) are judged from them.
# Finished jobs are skipped on a rerun (add --rerun by hand to redo them). Exit code: non-zero
# when any job failed; every other job still runs.
set -uo pipefail
SHARED="${ADBENCH_SHARED:-../shared}"
export ADBENCH_WEIGHTS_DIR="${ADBENCH_WEIGHTS_DIR:-$SHARED/weights}"
R="${RESULTS:-results}"
A="${ADBENCH:-adbench}"
MVTEC="$SHARED/data/mvtec_ad"
TILE="$SHARED/data/magnetic_tile"
status=0
run() { echo "+ adbench run $*" >&2; "$A" run "$@" --results "$R" -q || status=1; }

# bottle (209 train / 83 test): every method; predictions saved (intervals, galleries)
run -m all -d mvtec --data-root "$MVTEC" -c bottle --profile quick --save-predictions
run -m cutpaste -d mvtec --data-root "$MVTEC" -c bottle --profile quick_scratch --save-predictions

# magnetic_tile (802 train / 538 test). Memory banks use the paper's 1 % coreset option: 10 %
# of its 629k patches would cost ~10x bottle's whole selection.
run -m anomalydino,autoencoder,cutpaste,cutpaste_patch,dinomaly,draem,fastflow,feature_gaussian,mean_image,reverse_distillation,uniad \
    -d folder --data-root "$TILE" --profile quick
run -m patchcore,tocoad -d folder --data-root "$TILE" --profile quick --set coreset_ratio=0.01
run -m cutpaste -d folder --data-root "$TILE" --profile quick_scratch

# UniAD's and Dinomaly's own protocol: one model over both categories (a folder of links, one per category)
UNIFIED="${TMPDIR:-/tmp}/adbench-unified-bottle-magnetic_tile"
mkdir -p "$UNIFIED"
ln -sfn "$(cd "$MVTEC/bottle" && pwd)" "$UNIFIED/bottle"
ln -sfn "$(cd "$TILE" && pwd)" "$UNIFIED/magnetic_tile"
run -m uniad,dinomaly -d folder --data-root "$UNIFIED" --protocol unified --profile quick

exit $status
