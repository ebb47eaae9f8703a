"""DRAEM on generated data: training pairs, texture ops, learning, detection, registry."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from adbench.config import resolve_config
from adbench.data import Batch
from adbench.detector import RunContext
from adbench.errors import DataError
from adbench.registry import METHODS


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: on the shared CPU two OpenMP threads spin-wait on each other and a
    training step costs 5-10x the CPU time of a single-threaded one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def stripes_category(n_train: int, n_test: int, size: int = 64, seed: int = 0):
    """Normal: horizontal stripes with a random phase plus a little noise. Anomalous test
    images: a disk of random colour (radius 4-8 px) pasted at a random place."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")

    def normal():
        phase = torch.rand(1, generator=g).item() * 6.28
        base = 0.5 + 0.3 * torch.sin(yy / 3.0 + phase)
        img = torch.stack([base, 0.8 * base, 0.6 * base + 0.2])
        return (img + 0.02 * torch.randn(3, size, size, generator=g)).clamp(0, 1)

    train = torch.stack([normal() for _ in range(n_train)])
    test, labels, masks = [], [], []
    for i in range(n_test):
        img, mask = normal(), torch.zeros(size, size, dtype=torch.bool)
        if i % 2:
            r = 4 + 4 * torch.rand(1, generator=g).item()
            cy, cx = (8 + (size - 16) * torch.rand(2, generator=g)).tolist()
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            img = torch.where(mask[None], torch.rand(3, 1, 1, generator=g), img)
        test.append(img), labels.append(i % 2), masks.append(mask)
    return train, torch.stack(test), torch.tensor(labels), torch.stack(masks)


def as_batches(images: torch.Tensor, batch_size: int = 8) -> list[Batch]:
    return [
        Batch(images=images[i : i + batch_size], labels=torch.zeros(len(images[i : i + batch_size]), dtype=torch.long),
              paths=[""] * len(images[i : i + batch_size]), categories=["stripes"] * len(images[i : i + batch_size]),
              defect_types=["good"] * len(images[i : i + batch_size]))
        for i in range(0, len(images), batch_size)
    ]


def make(profile: str = "quick", **overrides):
    cls = METHODS.get("draem")
    cfg = resolve_config(cls.Config, cls.PROFILES, profile, overrides, method="draem")
    return cls(cfg, RunContext(seed=0))


def test_registered_with_paper_values():
    cls = METHODS.get("draem")
    paper = resolve_config(cls.Config, cls.PROFILES, "paper")
    assert (paper.image_size, paper.batch_size, paper.epochs, paper.lr) == (256, 8, 700, 1e-4)
    assert (paper.recon_width, paper.disc_width, paper.lr_milestones, paper.lr_gamma) == (128, 64, (0.8, 0.9), 0.2)
    assert paper.score_filter == 21 and paper.beta_max == 0.8 and paper.rotate_degrees == 45.0


def test_training_pair_is_consistent():
    det = make(rotate_prob=0.5)
    g = np.random.default_rng(0)
    images = (torch.rand(40, 3, 48, 48, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    normal, augmented, mask = det.sampler.batch(images, g)
    assert normal.shape == augmented.shape == (40, 3, 48, 48) and mask.shape == (40, 48, 48) and mask.dtype == torch.bool
    has = mask.flatten(1).any(1)
    assert 0.2 < has.float().mean() < 0.7  # about half anomaly-free (plus empty Perlin masks)
    differs = (augmented != normal).any(1)  # [N, H, W]
    assert not (differs & ~mask).any(), "pixels outside the mask must equal the normal image"
    for i in torch.nonzero(has).flatten():
        assert differs[i][mask[i]].float().mean() > 0.5, "the masked region must actually change"
    assert torch.equal(augmented[~has], normal[~has])
    # rotated normals differ from the stored image, unrotated ones equal it
    same_as_input = (normal * 255).round().to(torch.uint8).eq(images).flatten(1).all(1)
    assert 0 < int(same_as_input.sum()) < 40


def test_texture_augmentation_uses_three_distinct_library_ops():
    from adbench.methods.draem import TEXTURE_OPS, augment_texture

    tex = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1))
    seen = set()
    for seed in range(20):
        out, names = augment_texture(tex, np.random.default_rng(seed))
        assert len(set(names)) == 3 and set(names) <= set(TEXTURE_OPS)
        assert out.shape == tex.shape and 0 <= out.min() and out.max() <= 1
        seen.update(names)
    assert seen == set(TEXTURE_OPS)


def test_anomaly_source_folder_and_record(tmp_path):
    from PIL import Image

    assert make().record_extras()["anomaly_source"] == "procedural"
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(tmp_path / "t.png")
    det = make(anomaly_source=str(tmp_path))
    assert det.record_extras()["anomaly_source"] == f"dtd:{tmp_path}"
    assert det.source.sample((16, 16), np.random.default_rng(0)).shape == (3, 16, 16)
    with pytest.raises(DataError):
        make(anomaly_source=str(tmp_path / "missing"))


def test_networks_shapes_and_paper_widths():
    from adbench.methods.draem import DiscriminativeSubNetwork, ReconstructiveSubNetwork

    x = torch.rand(2, 3, 64, 64)
    assert ReconstructiveSubNetwork(4)(x).shape == (2, 3, 64, 64)
    assert DiscriminativeSubNetwork(4)(torch.cat([x, x], 1)).shape == (2, 2, 64, 64)
    with torch.device("meta"):  # official widths 128 / 64: about 97 M parameters in total
        paper = [ReconstructiveSubNetwork(128), DiscriminativeSubNetwork(64)]
    assert 90e6 < sum(p.numel() for m in paper for p in m.parameters()) < 105e6


def test_learns_and_detects_on_generated_category():
    torch.manual_seed(0)
    train, test, labels, masks = stripes_category(48, 40, size=64)
    det = make(image_size=64, recon_width=8, disc_width=8, epochs=12, batch_size=8, score_filter=5)
    det.fit(as_batches(train))
    assert det.epochs_run == 12
    first, last = np.mean(det.loss_history[:2]), np.mean(det.loss_history[-2:])
    assert last < 0.8 * first, det.loss_history
    pred = det.predict(as_batches(test, 40)[0])
    scores, maps = pred.numpy()
    assert maps.shape == (40, 64, 64) and np.isfinite(scores).all()
    assert roc_auc_score(labels.numpy(), scores) >= 0.7
    assert det.record_extras()["final_train_loss"] == det.loss_history[-1]


def test_max_steps_caps_whole_epochs():
    from adbench.methods.draem import effective_epochs

    assert effective_epochs(700, None, 209, 8) == 700
    assert effective_epochs(40, 1000, 209, 8) == 37  # 27 steps per epoch
    assert effective_epochs(40, 1000, 802, 8) == 9
    assert effective_epochs(40, 1000, 20, 8) == 40
    assert effective_epochs(40, 10, 802, 8) == 1
