"""The data layer: samples and geometry, loaders, and the input pipeline of training jobs.

This package's top level is plugin API (README "Adding a method", ``tests/plugin_pkg``): a
dataset adapter builds ``Sample``s, a detector receives ``Batch``es made with ``Preprocess``'s
geometry. The modules behind it:

* ``samples``: Sample, Batch, Preprocess, RGB and mask loading (DESIGN.md's conventions).
* ``loaders``: torch Datasets and DataLoaders over samples.
* ``input_settings``, ``arrays``, ``image_cache``, ``batch_stream``: the input pipeline
  (issue 16): training images decoded once per job into a uint8 cache in RAM or memory-mapped
  on disk, and batches (synthetic anomalies included) made by DataLoader workers, seeded per
  (seed, epoch, image) so the worker count never changes a result.
"""
from adbench.data.loaders import SampleDataset, collate, make_loader
from adbench.data.samples import (
    IMAGE_EXTENSIONS,
    Batch,
    Preprocess,
    Sample,
    image_size_of,
    is_image_file,
    load_mask,
    load_rgb,
    to_rgb,
)

__all__ = ["IMAGE_EXTENSIONS", "Batch", "Preprocess", "Sample", "SampleDataset", "collate", "image_size_of",
           "is_image_file", "load_mask", "load_rgb", "make_loader", "to_rgb"]
