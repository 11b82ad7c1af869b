"""The bundled digit-scenes dataset: determinism, disjoint source pools, and its generative statistics."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ctran.data import Sample
from ctran.data.digit_scenes import (
    CONTEXT_NAMES,
    CONTEXTS,
    DIGIT_NAMES,
    LIKELY_DIGITS,
    SPLIT_SIZES,
    TAG_NAMES,
    TAGS,
    TYPICAL_TAGS,
    DigitScenesDataset,
    generate_split,
    load_digit_scenes,
    source_pools,
)
from ctran.errors import CTranError
from ctran.normalization import IMAGENET

STATS_SIZE = 6000


@pytest.fixture(scope="module")
def scenes():
    """A moderately large train split for the statistics (about 1.5 s to generate)."""
    return generate_split("train", seed=0, size=STATS_SIZE)


def _tolerance(p: float, n: int, sigmas: float = 4.5) -> float:
    return sigmas * math.sqrt(p * (1 - p) / n)


def _image_hashes(images: np.ndarray) -> set[str]:
    return {hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest() for image in images}


# ---------------------------------------------------------------------------------------------- determinism


def test_standard_sizes():
    assert SPLIT_SIZES == {"train": 12_000, "val": 2_000, "test": 4_000}


def test_default_size_is_standard():
    val = generate_split("val", seed=0)
    assert len(val) == 2_000
    assert val.images.shape == (2_000, 48, 48)


def test_generate_split_is_deterministic():
    a = generate_split("val", seed=1, size=200)
    b = generate_split("val", seed=1, size=200)
    assert np.array_equal(a.images, b.images)
    assert np.array_equal(a.targets, b.targets)
    assert np.array_equal(a.extras, b.extras)
    assert (a.split, a.seed) == ("val", 1)


def test_generate_split_differs_across_seeds_and_splits():
    a = generate_split("val", seed=1, size=100)
    b = generate_split("val", seed=2, size=100)
    c = generate_split("test", seed=1, size=100)
    assert not np.array_equal(a.images, b.images)
    assert not np.array_equal(a.targets, b.targets)
    assert not np.array_equal(a.images, c.images)


def test_smaller_size_is_a_prefix():
    """A quick run on N scenes sees the first N scenes of the full split (evaluate --size relies on it)."""
    small = generate_split("test", seed=0, size=50)
    large = generate_split("test", seed=0, size=120)
    assert np.array_equal(small.images, large.images[:50])
    assert np.array_equal(small.targets, large.targets[:50])
    assert np.array_equal(small.extras, large.extras[:50])


def test_unknown_split():
    with pytest.raises(CTranError, match="unknown digits split 'training'"):
        generate_split("training", seed=0, size=10)
    with pytest.raises(CTranError, match="must be positive"):
        generate_split("val", seed=0, size=0)
    with pytest.raises(CTranError, match="non-negative"):
        generate_split("val", seed=-1, size=10)


# ---------------------------------------------------------------------------------------------- pools


@pytest.mark.parametrize("seed", [0, 3])
def test_source_pools_are_disjoint_and_complete(seed):
    pools = source_pools(seed)
    assert set(pools) == {"train", "val", "test"}
    hashes = {name: _image_hashes(images) for name, (images, _) in pools.items()}
    for name, (images, classes) in pools.items():
        assert images.shape[1:] == (8, 8)
        assert len(hashes[name]) == len(images)  # load_digits has no duplicate images
        assert len(classes) == len(images)
        assert images.min() >= 0 and images.max() <= 1
    assert not hashes["train"] & hashes["val"]
    assert not hashes["train"] & hashes["test"]
    assert not hashes["val"] & hashes["test"]
    assert sum(len(h) for h in hashes.values()) == 1797


def test_source_pools_are_stratified():
    pools = source_pools(0)
    total = sum(np.bincount(classes, minlength=10) for _, classes in pools.values())
    for name, share in (("train", 0.6), ("val", 0.2), ("test", 0.2)):
        counts = np.bincount(pools[name][1], minlength=10)
        assert np.abs(counts - share * total).max() <= 2, (name, counts, total)


def test_source_pools_depend_on_seed():
    a, b = source_pools(0), source_pools(1)
    assert _image_hashes(a["test"][0]) != _image_hashes(b["test"][0])


# ---------------------------------------------------------------------------------------------- statistics


def test_arrays(scenes):
    assert scenes.images.dtype == np.uint8
    assert scenes.images.shape == (STATS_SIZE, 48, 48)
    assert scenes.targets.shape == (STATS_SIZE, 16)
    assert scenes.extras.shape == (STATS_SIZE, 4)
    assert set(np.unique(scenes.targets)) <= {0, 1}
    assert set(np.unique(scenes.extras)) <= {0, 1}
    assert scenes.images.max() == 255  # clean digits reach full brightness
    assert scenes.target_names == DIGIT_NAMES + TAG_NAMES
    assert scenes.extra_names == CONTEXT_NAMES


def test_every_scene_has_a_digit_and_one_context(scenes):
    assert (scenes.targets[:, :10].sum(1) >= 1).all()
    assert (scenes.extras.sum(1) == 1).all()


def test_contexts_are_uniform(scenes):
    share = scenes.extras.mean(0)
    np.testing.assert_allclose(share, 0.25, atol=_tolerance(0.25, STATS_SIZE))


def test_digit_probabilities_given_context(scenes):
    context = scenes.extras.argmax(1)
    digits = scenes.targets[:, :10]
    for c, name in enumerate(CONTEXTS):
        rows = digits[context == c]
        probs = np.where(np.isin(np.arange(10), LIKELY_DIGITS[name]), 0.7, 0.07)
        p_none = np.prod(1 - probs)
        expected = probs / (1 - p_none)  # scenes without a digit are drawn again
        observed = rows.mean(0)
        for d in range(10):
            tol = _tolerance(expected[d], len(rows))
            assert abs(observed[d] - expected[d]) < tol, (name, d, observed[d], expected[d])
        # And the spec's round numbers hold within the brief's tolerance.
        np.testing.assert_allclose(observed, probs, atol=0.05)


def test_tag_probabilities_given_context(scenes):
    context = scenes.extras.argmax(1)
    tags = scenes.targets[:, 10:]
    for c, name in enumerate(CONTEXTS):
        rows = tags[context == c]
        expected = np.array([0.8 if tag in TYPICAL_TAGS[name] else 0.05 for tag in TAGS])
        observed = rows.mean(0)
        for t in range(len(TAGS)):
            assert abs(observed[t] - expected[t]) < _tolerance(expected[t], len(rows)), (name, TAGS[t])


def test_hidden_digits(scenes):
    """A single-digit scene is blank exactly when its digit is hidden (p = 0.15)."""
    single = scenes.targets[:, :10].sum(1) == 1
    blank = scenes.images.reshape(len(scenes), -1).max(1) == 0
    n = int(single.sum())
    assert n > 300
    rate = blank[single].mean()
    # An occlusion block can, rarely, erase a thin digit completely: allow a little above 0.15.
    assert 0.15 - _tolerance(0.15, n) < rate < 0.15 + _tolerance(0.15, n) + 0.01
    # With several digits all must be hidden, which is much rarer.
    several = scenes.targets[:, :10].sum(1) >= 3
    assert blank[several].mean() < 0.01


def test_drawn_digit_count_bounded_by_labels(scenes):
    """A scene never shows more bright 16 x 16 regions than it has digit labels (a loose sanity check)."""
    n_digits = scenes.targets[:, :10].sum(1)
    lit = (scenes.images > 0).reshape(len(scenes), -1).sum(1)
    # Each drawn digit lights at most one 16 x 16 cell.
    assert (lit <= n_digits * 16 * 16).all()


# ---------------------------------------------------------------------------------------------- dataset


def test_dataset_samples():
    data = generate_split("val", seed=0, size=40)
    dataset = DigitScenesDataset(data)
    assert len(dataset) == 40
    sample = dataset[3]
    assert isinstance(sample, Sample)
    assert sample.image.shape == (3, 48, 48)
    assert sample.image.dtype == torch.float32
    assert sample.targets.shape == (16,) and sample.targets.dtype == torch.long
    assert sample.extras.shape == (4,) and sample.extras.dtype == torch.long
    assert sample.index == 3
    assert torch.equal(sample.targets, torch.from_numpy(data.targets[3]).long())
    assert torch.equal(sample.extras, torch.from_numpy(data.extras[3]).long())
    # Grey replicated to RGB and ImageNet-normalised.
    mean = torch.tensor(IMAGENET.mean).view(3, 1, 1)
    std = torch.tensor(IMAGENET.std).view(3, 1, 1)
    raw = sample.image * std + mean
    grey = torch.from_numpy(data.images[3]).float() / 255
    torch.testing.assert_close(raw, grey.expand(3, -1, -1), atol=1e-5, rtol=0)


def test_dataset_label_names():
    dataset = load_digit_scenes("val", 0, 10)
    assert dataset.target_names == DIGIT_NAMES + TAG_NAMES
    assert dataset.extra_names == CONTEXT_NAMES
    assert dataset.label_names == DIGIT_NAMES + TAG_NAMES + CONTEXT_NAMES
    assert len(dataset.label_names) == 20
    assert dataset.label_names[:10] == tuple(f"digit_{d}" for d in range(10))
    assert dataset.label_names[16:] == tuple(f"context_{c}" for c in CONTEXTS)


def test_dataset_batches_with_default_collate():
    dataset = load_digit_scenes("test", 0, 10)
    images, targets, extras, indices = next(iter(DataLoader(dataset, batch_size=4, shuffle=False)))
    assert images.shape == (4, 3, 48, 48)
    assert targets.shape == (4, 16)
    assert extras.shape == (4, 4)
    assert indices.tolist() == [0, 1, 2, 3]
