"""What every trained method shares: resumable training with checkpoints.

* ``session``: ``Checkpointing`` (one per job, ``RunContext.checkpoints``) and its ``Phase``
  (one per training stage): data order by (seed, phase, epoch), interval checkpoints, resume,
  NaN/inf detection;
* ``checkpoints``: the checkpoint file (atomic write, belonging checks, sidecar header);
* ``rng``: capture and restore of every random state.
"""
from adbench.training.session import Checkpointing, Phase, TrainingDiverged, epoch_permutation

__all__ = ["Checkpointing", "Phase", "TrainingDiverged", "epoch_permutation"]
