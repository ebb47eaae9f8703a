#!/usr/bin/env bash
# Rebuild every table and figure under results/ from the committed records alone
# (no training). Run from the repository root: bash scripts/make_results.sh
set -euo pipefail
A="${ADBENCH:-adbench}"
R=results
mkdir -p $R/tables $R/figures
$A table --results $R --dataset mvtec --metric image_auroc,pixel_auroc,aupro --out $R/tables/mvtec.md
$A table --results $R --dataset folder --metric image_auroc,pixel_auroc,aupro --out $R/tables/folder.md
$A table --results $R --dataset mvtec --reference --metric image_auroc,pixel_auroc,pixel_auroc_anomalous,aupro --out $R/tables/mvtec_vs_published.md
$A table --results $R --efficiency --out $R/tables/efficiency.md
$A table --results $R --dataset mvtec --ci --out $R/tables/mvtec_ci.md
$A evaluate --results $R > $R/tables/evaluate.md
$A compare feature_gaussian mean_image --results $R -d mvtec > $R/tables/compare_feature_gaussian_vs_mean_image.md
$A compare patchcore tocoad --results $R -d mvtec > $R/tables/compare_patchcore_vs_tocoad.md
$A compare patchcore reverse_distillation --results $R -d mvtec > $R/tables/compare_patchcore_vs_reverse_distillation.md
for d in mvtec folder; do
  for m in image_auroc pixel_auroc; do
    $A plot heatmap --results $R -d $d --metric $m --out $R/figures/${d}_heatmap_$m
  done
done
$A plot cost --results $R -d folder --metric image_auroc --out $R/figures/folder_cost_fit_seconds
$A plot bars --results $R -d folder --metric image_auroc --out $R/figures/folder_bars_image_auroc
$A plot bars --results $R -d mvtec --metric image_auroc --out $R/figures/mvtec_bars_image_auroc
$A plot cost --results $R -d mvtec --metric image_auroc --out $R/figures/mvtec_cost_fit_seconds
$A plot cost --results $R -d mvtec --metric image_auroc --x test_throughput --out $R/figures/mvtec_cost_throughput
for m in patchcore tocoad reverse_distillation fastflow uniad draem autoencoder cutpaste_patch feature_gaussian mean_image anomalydino dinomaly; do
  $A plot gallery --results $R -d mvtec -m $m -c bottle -n 4 --out $R/figures/gallery_${m}_bottle_worst
done
# the report site (results/report/index.html): same records, same bytes
$A report --results $R --out $R/report
