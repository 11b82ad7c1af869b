"""Which labels the model is told: Label Mask Training, the evaluation known-sets, and the masked loss.

All functions take ground truth ``truth`` (B, L) in {-1, 0, 1} (-1: not annotated) and return input states
(B, L) in the same encoding (``ctran.states``). A label whose ground truth is missing is never revealed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ctran.states import POSITIVE, UNKNOWN


def sample_training_states(
    truth: torch.Tensor,
    indices: torch.Tensor | list[int],
    seed: int,
    epoch: int,
    max_known_fraction: float = 0.75,
    revealable: torch.Tensor | None = None,
) -> torch.Tensor:
    """Label Mask Training: per image reveal ``k ~ U{0..floor(f*A)}`` random labels among its A annotated
    ``revealable`` ones (a (L,) bool mask; None: every label).

    The known subset is uniform over labels (so mostly negatives, as in the paper); the model learns to
    use whatever it is told, and the loss covers the rest. On fully annotated data A is the number of
    revealable labels, the paper's rule; with missing annotations the cap follows what the image has, so
    that at least a quarter of its annotations are always left to the loss (a cap over all labels would
    reveal every annotation of a sparsely annotated image, leaving it nothing to learn from). CUB-312
    reveals only its concepts (the paper: 0..84 of 112 known, the bird class never), hence ``revealable``.
    Each image's draw depends only on (seed, epoch, image index), so it is the same however the batch is
    split across processes and when a killed run resumes. The trainer draws on the host, before the batch
    moves to the device: nothing here waits for a GPU. Only the per-image generators run in a Python loop;
    the selection is batched (the same masks as the per-image stable argsort it replaced).
    """
    num_labels = truth.shape[1]
    pool = np.ones(num_labels, dtype=bool) if revealable is None else revealable.cpu().numpy().astype(bool)
    if pool.shape != (num_labels,):
        raise ValueError(f"revealable must be a ({num_labels},) mask, got shape {pool.shape}")
    annotated = (truth != UNKNOWN).cpu().numpy() & pool  # (B, L): what may be revealed
    max_known = np.floor(max_known_fraction * annotated.sum(1)).astype(np.int64)  # (B,)
    num_known, keys = _image_draws(torch.as_tensor(indices).tolist(), max_known, seed, epoch, num_labels)
    reveal = _smallest_annotated(keys, annotated, num_known)  # (B, L)
    reveal_t = torch.from_numpy(reveal).to(truth.device)
    return torch.where(reveal_t, truth, torch.full_like(truth, UNKNOWN))


def evaluation_states(
    truth: torch.Tensor, indices: torch.Tensor | list[int], fraction: float, seed: int
) -> torch.Tensor:
    """Reveal ``int(fraction * A)`` of each image's A annotated labels, chosen from (seed, image index) alone.

    The choice does not depend on batch composition, model or run, so every model is scored on the same
    known sets. The count follows what the image has, not the L labels: on sparse annotations (Open Images,
    ``unlisted=unknown``, ``data.keep_annotations``) a count over L would reveal every annotation and leave
    nothing to score. On fully annotated data A = L, so the known sets are the ones ``int(fraction * L)``
    always gave. This is the paper's protocol: the known labels are mostly negatives.
    """
    return _reveal_per_image(truth, truth != UNKNOWN, indices, fraction, lambda index: [seed, index])


def positive_states(
    truth: torch.Tensor, indices: torch.Tensor | list[int], fraction: float, seed: int
) -> torch.Tensor:
    """Reveal ``int(fraction * P)`` of each image's P present labels (truth 1), chosen from (seed, image
    index) alone; every other label stays unknown, so no negative or unannotated label is ever told.

    What a tagged library has: some of each image's true tags, never its absent ones. The draw is a child
    stream of ``evaluation_states``' (numpy's ``spawn_key``; 1 is the random crops' in ``loaders``), so it
    is not the uniform draw restricted to positives; a trailing 0 on the uniform key would be, since numpy
    pads keys with zeros.
    """
    return _reveal_per_image(
        truth,
        truth == POSITIVE,
        indices,
        fraction,
        lambda index: np.random.SeedSequence([seed, index], spawn_key=(2,)),
    )


def _reveal_per_image(
    truth: torch.Tensor,
    pool: torch.Tensor,
    indices: torch.Tensor | list[int],
    fraction: float,
    key: Callable[[int], object],
) -> torch.Tensor:
    """States that reveal ``int(fraction * n)`` of the n labels in each row's ``pool`` (B, L), the first of
    a permutation drawn from ``key(image index)``; the rest unknown."""
    states = torch.full_like(truth, UNKNOWN)
    if fraction <= 0:
        return states
    pool_cpu = pool.cpu()
    for row, index in enumerate(torch.as_tensor(indices).tolist()):
        candidates = torch.nonzero(pool_cpu[row]).flatten().numpy()
        count = int(fraction * candidates.size)
        if count == 0:
            continue
        chosen = torch.as_tensor(np.random.default_rng(key(index)).permutation(candidates)[:count])
        chosen = chosen.to(truth.device)
        states[row, chosen] = truth[row, chosen]
    return states


def shown_images(indices: torch.Tensor | list[int], seed: int, epoch: int, dropout: float) -> torch.Tensor:
    """Image dropout (``train.image_dropout``): (B,) True for the images whose image tokens the model sees.

    On clean data the image tokens alone can separate the training set (a frozen ImageNet backbone on
    tagged icons reaches a training loss near 0.02), so Label Mask Training never has to teach the label
    tokens to read the known labels, and a user's tags barely move the predictions. An image shown
    without its tokens can only be scored from what LMT revealed of it: the label tokens must learn how
    labels go together. Each image's draw depends on (seed, epoch, index) alone, like LMT's, on its own
    stream (``spawn_key``), so it is the same however the batch is split and when a killed run resumes.
    """
    indices = torch.as_tensor(indices).tolist()
    if dropout <= 0:
        return torch.ones(len(indices), dtype=torch.bool)
    draws = [
        np.random.default_rng(np.random.SeedSequence([seed, epoch, index], spawn_key=(2,))).random()
        for index in indices
    ]
    return torch.tensor(draws) >= dropout


def scored_mask(truth: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """Entries that count in loss and metrics: annotated and not given to the model."""
    return (truth != UNKNOWN) & (inputs == UNKNOWN)


def kept_labels(
    truth: torch.Tensor,
    states: torch.Tensor,
    scored: int,
    budget: int,
    seed: int,
    epoch: int,
    indices: torch.Tensor | list[int],
) -> torch.Tensor:
    """The label tokens a training batch runs with (``train.label_tokens``): (K,) ascending label indices.

    Every label that carries a loss (one of the first ``scored``, annotated and not revealed) or a known
    state in some image of the batch is kept: the union over the batch, so the batch shares one token
    set. The others carry nothing for this batch; a uniform sample of them fills the set up to ``budget``
    tokens, so the labels still see a crowd of other label tokens. The sample is drawn from (seed, epoch,
    the batch's image indices), so a resumed run repeats it. On sparse data (Open Images: about 10
    annotated of 9,605 labels per image) a batch of 16 needs a few hundred tokens, not 9,605.
    """
    needed = (states != UNKNOWN).any(0)  # (L,)
    needed[:scored] |= scored_mask(truth[:, :scored], states[:, :scored]).any(0)
    others = torch.nonzero(~needed).flatten()  # (L - needed,)
    fill = min(max(budget - int(needed.sum()), 0), len(others))
    indices = torch.as_tensor(indices).tolist()
    rng = np.random.default_rng([seed, epoch, len(indices), *indices])  # never an LMT key (3 entries)
    needed[others[torch.from_numpy(rng.choice(len(others), fill, replace=False))]] = True
    return torch.nonzero(needed).flatten()


def _image_draws(
    indices: list[int], max_known: np.ndarray, seed: int, epoch: int, num_labels: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each image's own generator, keyed by (seed, epoch, index): how many labels it reveals (B,) and one
    random key per label (B, L). The only per-image loop: two generator calls, no sorting."""
    num_known = np.empty(len(indices), dtype=np.int64)  # (B,)
    keys = np.empty((len(indices), num_labels))  # (B, L)
    for row, index in enumerate(indices):
        rng = np.random.default_rng([seed, epoch, index])
        num_known[row] = rng.integers(0, max_known[row] + 1)
        keys[row] = rng.random(num_labels)
    return num_known, keys


def _smallest_annotated(keys: np.ndarray, annotated: np.ndarray, num_known: np.ndarray) -> np.ndarray:
    """(B, L) mask of the ``num_known[b]`` annotated labels with the smallest keys in each row, ties going
    to the lower label index: exactly the first ``num_known`` of a stable argsort of the row's keys with
    the unannotated ones last. Each row's annotated keys are packed to the left first, so a sparsely
    annotated batch costs what it holds, not B * L."""
    if annotated.all():  # fully annotated data: nothing to pack
        return _first_smallest(keys, num_known)
    rows, cols = np.nonzero(annotated)  # row-major: labels ascending within a row
    place = np.arange(len(rows)) - np.searchsorted(rows, rows)  # rank of each entry's label in its row
    packed = np.full((len(keys), place.max(initial=-1) + 1), 2.0)  # (B, A): A the most annotations
    packed[rows, place] = keys[rows, cols]  # keys are in [0, 1): padding comes last
    reveal = np.zeros(annotated.shape, dtype=bool)  # (B, L)
    reveal[rows, cols] = _first_smallest(packed, num_known)[rows, place]
    return reveal


def _first_smallest(keys: np.ndarray, count: np.ndarray) -> np.ndarray:
    """(B, A) mask of the ``count[b]`` smallest keys of each row, ties to the lower column, without
    sorting the rows: a partition around the largest count, a sort of those few columns for each row's
    threshold key, then comparisons."""
    most = int(count.max(initial=0))
    if most == 0:
        return np.zeros(keys.shape, dtype=bool)
    smallest = np.sort(np.partition(keys, most - 1, axis=1)[:, :most], axis=1)  # (B, most)
    threshold = smallest[np.arange(len(keys)), np.maximum(count - 1, 0), None]  # (B, 1)
    below = keys < threshold  # (B, A)
    ties = keys == threshold  # (B, A): almost always the threshold's own entry only
    need = count[:, None] - below.sum(1, keepdims=True)  # (B, 1); 0 where count is 0
    return below | (ties & (np.cumsum(ties, axis=1) <= need))
