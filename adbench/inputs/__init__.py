"""The input pipeline every trained method calls: decode once, feed from workers.

Why (issue 16): at paper budgets a trained method's GPU step is tiny next to decoding a
1-megapixel JPEG (~38 ms on one core) or drawing a synthetic anomaly on one CPU thread, and the
old loaders decoded every training image again in every epoch, in the main process.

* ``settings``: how many DataLoader workers a job has and how much RAM its caches may take
  (both divided between the jobs that run at once), and whether batches go through pinned memory.
* ``arrays``: one array in RAM when it fits the job's budget, else memory-mapped under the
  job's work folder (``--workdir``).
* ``images``: the training set decoded once per job, at the method's geometry, as uint8.
* ``stream``: training batches made by DataLoader workers from a phase's data plan; anything
  random in a batch (synthetic anomalies) is drawn from a generator seeded by (job seed, stream,
  epoch, sample), so the batches do not depend on the number of workers.
"""
from adbench.inputs.arrays import ram_or_disk
from adbench.inputs.images import DecodedImages, as_float, decode_training_images
from adbench.inputs.settings import InputSettings, default_cache_bytes, default_workers
from adbench.inputs.stream import BatchStream, gather, per_sample, sample_rng, to_device

__all__ = [
    "BatchStream", "DecodedImages", "InputSettings", "as_float", "decode_training_images", "default_cache_bytes",
    "default_workers", "gather", "per_sample", "ram_or_disk", "sample_rng", "to_device",
]
