"""The evaluation layer: metrics of one job's test outputs (image and pixel AUROC, AUPRO,
F1-max, AP), exact (``metrics``) and streamed batch by batch (``streaming``), on shared curve
helpers (``curves``). It imports only the core; results and reporting build on it."""
