"""Label Mask Training states, the deterministic evaluation known-sets, and the masked BCE loss."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import chisquare

from ctran.states import UNKNOWN
from ctran.training.label_mask import evaluation_states, kept_labels, sample_training_states, scored_mask
from ctran.training.losses import asl_terms, bce_terms


def _truth(rows: int, labels: int, seed: int = 0, unannotated: float = 0.0) -> torch.Tensor:
    """Random ground truth in {0, 1}, with a fraction of entries set to -1 (not annotated)."""
    g = torch.Generator().manual_seed(seed)
    truth = (torch.rand(rows, labels, generator=g) < 0.3).long()
    if unannotated:
        truth[torch.rand(rows, labels, generator=g) < unannotated] = UNKNOWN
    return truth


# ---------------------------------------------------------------------------------------------- training


def _sample(truth: torch.Tensor, seed: int = 0, epoch: int = 0, fraction: float = 0.75, indices=None):
    indices = torch.arange(len(truth)) if indices is None else indices
    return sample_training_states(truth, indices, seed, epoch, fraction)


def test_training_states_reveal_truth_or_nothing():
    truth = _truth(500, 20, unannotated=0.3)
    states = _sample(truth)
    assert states.shape == truth.shape and states.dtype == truth.dtype
    revealed = states != UNKNOWN
    assert revealed.any()
    assert torch.equal(states[revealed], truth[revealed])
    assert (states[truth == UNKNOWN] == UNKNOWN).all()  # unannotated labels are never revealed


def test_training_states_reveal_only_annotated_and_always_leave_some_to_the_loss():
    """A sparsely annotated image: the cap is 0.75 of *its* annotations, so some are always scored."""
    truth = torch.full((4000, 10), UNKNOWN)
    truth[:, [3, 7]] = torch.tensor([1, 0])
    truth[2000:, [1, 5]] = torch.tensor([0, 1])  # the second half has 4 annotations
    known = _sample(truth, seed=1) != UNKNOWN
    assert known[:, [0, 2, 4, 6, 8, 9]].sum() == 0
    assert (known[:2000, [1, 5]] == 0).all()
    # 2 annotated: k ~ U{0, 1}; 4 annotated: k ~ U{0..3}. Never every annotation of an image.
    two = torch.bincount(known[:2000].sum(1), minlength=3).double() / 2000
    four = torch.bincount(known[2000:].sum(1), minlength=5).double() / 2000
    np.testing.assert_allclose(two.numpy(), [1 / 2, 1 / 2, 0], atol=0.04)
    np.testing.assert_allclose(four.numpy(), [1 / 4, 1 / 4, 1 / 4, 1 / 4, 0], atol=0.04)


def test_training_states_statistics():
    rows, labels = 20_000, 20
    truth = _truth(rows, labels, seed=3)
    states = _sample(truth, seed=4)
    known = states != UNKNOWN
    max_known = math.floor(0.75 * labels)  # 15

    # Number known per image is uniform over 0..floor(0.75 L).
    counts = torch.bincount(known.sum(1), minlength=labels + 1).numpy()
    assert counts[max_known + 1 :].sum() == 0
    per_value = counts[: max_known + 1]
    assert (per_value > 0).all()
    assert chisquare(per_value).pvalue > 1e-4
    expected = rows / (max_known + 1)
    assert np.abs(per_value - expected).max() < 0.1 * expected

    # Every label is revealed equally often.
    per_label = known.sum(0).numpy()
    assert chisquare(per_label).pvalue > 1e-4
    np.testing.assert_allclose(per_label / rows, max_known / 2 / labels, rtol=0.05)

    # The known set is uniform over labels, so positives are revealed at their base rate.
    positive_rate = (states == 1).sum() / known.sum()
    assert abs(float(positive_rate) - float((truth == 1).double().mean())) < 0.01


def test_training_states_max_fraction_zero_reveals_nothing():
    states = _sample(_truth(100, 8), fraction=0.0)
    assert (states == UNKNOWN).all()


def test_training_states_refuse_a_revealable_mask_of_the_wrong_shape() -> None:
    """A mask that does not match the labels is a configuration error: say what shape was expected."""
    truth = _truth(4, 10)
    with pytest.raises(ValueError, match=r"^revealable must be a \(10,\) mask, got shape \(9,\)$"):
        sample_training_states(truth, torch.arange(4), 0, 0, revealable=torch.ones(9, dtype=torch.bool))


def test_training_states_are_reproducible_and_vary_with_seed_and_epoch():
    truth = _truth(64, 12, unannotated=0.1)
    a = _sample(truth, seed=7, epoch=2)
    assert torch.equal(a, _sample(truth, seed=7, epoch=2))
    assert not torch.equal(a, _sample(truth, seed=8, epoch=2))
    assert not torch.equal(a, _sample(truth, seed=7, epoch=3))
    assert not torch.equal(a, _sample(truth, seed=7, epoch=2, indices=torch.arange(64, 128)))


def test_training_states_do_not_depend_on_batch_composition():
    """Each image's draw depends only on (seed, epoch, index): split or shuffled batches agree."""
    n = 30
    truth = _truth(n, 12, seed=9, unannotated=0.2)
    indices = torch.arange(500, 500 + n)
    full = _sample(truth, seed=1, epoch=4, indices=indices)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    rebuilt = torch.empty_like(full)
    for chunk in torch.split(order, [11, 1, 18]):
        rebuilt[chunk] = _sample(truth[chunk], seed=1, epoch=4, indices=indices[chunk].tolist())
    assert torch.equal(rebuilt, full)


# ---------------------------------------------------------------------------------------------- evaluation


@pytest.mark.parametrize(
    ("fraction", "labels", "count"),
    [(0.1, 16, 1), (0.25, 16, 4), (0.5, 16, 8), (0.75, 16, 12), (0.3, 20, 6)],
)
def test_evaluation_states_reveal_exact_count(fraction, labels, count):
    truth = _truth(50, labels, seed=1)
    states = evaluation_states(truth, torch.arange(50), fraction, seed=0)
    known = states != UNKNOWN
    assert (known.sum(1) == count).all()
    assert int(fraction * labels) == count
    assert torch.equal(states[known], truth[known])


def test_evaluation_states_never_reveal_unannotated():
    truth = _truth(200, 16, seed=2, unannotated=0.6)
    states = evaluation_states(truth, list(range(200)), 0.5, seed=0)
    known = states != UNKNOWN
    assert (states[truth == UNKNOWN] == UNKNOWN).all()
    assert torch.equal(states[known], truth[known])
    annotated = (truth != UNKNOWN).sum(1)
    assert torch.equal(known.sum(1), (0.5 * annotated).long())  # half of what each image has
    # A row with nothing annotated gets nothing.
    empty = torch.full((1, 16), UNKNOWN)
    assert (evaluation_states(empty, [0], 0.5, seed=0) == UNKNOWN).all()


def _sparse_truth(rows: int, labels: int = 300, annotated: int = 9, seed: int = 0) -> torch.Tensor:
    """Open Images-like truth: each image annotates about ``annotated`` of ``labels``, the rest unknown."""
    g = torch.Generator().manual_seed(seed)
    truth = torch.full((rows, labels), UNKNOWN)
    picked = torch.rand(rows, labels, generator=g) < annotated / labels
    truth[picked] = (torch.rand(rows, labels, generator=g) < 0.3).long()[picked]
    return truth


@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.75])
def test_evaluation_states_reveal_a_fraction_of_each_images_annotations(fraction):
    """On sparse annotations (about 9 of 300 labels per image) each image keeps labels to score: image i
    reveals int(f * A_i) of its A_i annotated labels, and the rest of them are scored."""
    truth = _sparse_truth(400)
    states = evaluation_states(truth, torch.arange(400), fraction, seed=0)
    annotated = (truth != UNKNOWN).sum(1)
    known = states != UNKNOWN
    assert torch.equal(known.sum(1), (fraction * annotated).long())
    assert torch.equal(states[known], truth[known])
    scored = scored_mask(truth, states)
    assert torch.equal(scored.sum(1), annotated - (fraction * annotated).long())
    assert int(scored.sum()) > 0.2 * int(annotated.sum())


def _old_evaluation_states(truth: torch.Tensor, indices: torch.Tensor, fraction: float, seed: int):
    """The known sets before sparse annotations were handled: int(fraction * L) per image."""
    states = torch.full_like(truth, UNKNOWN)
    count = int(fraction * truth.shape[1])
    for row, index in enumerate(indices.tolist()):
        annotated = torch.nonzero(truth[row] != UNKNOWN).flatten().numpy()
        chosen = torch.as_tensor(np.random.default_rng([seed, index]).permutation(annotated)[:count])
        states[row, chosen] = truth[row, chosen]
    return states


@pytest.mark.parametrize(("fraction", "labels"), [(0.25, 16), (0.5, 16), (0.75, 16), (0.3, 20), (0.5, 81)])
def test_evaluation_states_unchanged_on_fully_annotated_data(fraction, labels):
    """Every label annotated (A = L): the known sets are bit-identical to the old int(f * L) rule, so the
    published digit-scenes numbers do not move."""
    truth = _truth(60, labels, seed=4)
    indices = torch.arange(1000, 1060)
    new, old = (
        evaluation_states(truth, indices, fraction, 7),
        _old_evaluation_states(truth, indices, fraction, 7),
    )
    assert torch.equal(new, old)


def test_evaluation_states_depend_only_on_seed_and_index():
    n = 40
    truth = _truth(n, 16, seed=5)
    indices = torch.arange(100, 100 + n)
    full = evaluation_states(truth, indices, 0.5, seed=3)

    # Recompute in shuffled batches of uneven sizes: every row must get the same known set.
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    rebuilt = torch.empty_like(full)
    for chunk in torch.split(order, [7, 13, 1, 19]):
        rebuilt[chunk] = evaluation_states(truth[chunk], indices[chunk], 0.5, seed=3)
    assert torch.equal(rebuilt, full)

    # A row's known set follows its index, not its position in the batch.
    alone = evaluation_states(truth[5:6], indices[5:6], 0.5, seed=3)
    assert torch.equal(alone, full[5:6])


def test_evaluation_states_differ_across_seeds_and_indices():
    truth = _truth(40, 16, seed=6)
    a = evaluation_states(truth, torch.arange(40), 0.5, seed=0)
    b = evaluation_states(truth, torch.arange(40), 0.5, seed=1)
    c = evaluation_states(truth, torch.arange(40, 80), 0.5, seed=0)
    assert not torch.equal(a != UNKNOWN, b != UNKNOWN)
    assert not torch.equal(a != UNKNOWN, c != UNKNOWN)
    # Same seed and indices: same result on every call.
    assert torch.equal(a, evaluation_states(truth, torch.arange(40), 0.5, seed=0))


def test_evaluation_states_cover_labels_evenly():
    truth = _truth(4000, 16, seed=7)
    known = evaluation_states(truth, torch.arange(4000), 0.25, seed=0) != UNKNOWN
    per_label = known.sum(0).numpy()
    assert chisquare(per_label).pvalue > 1e-4


def test_evaluation_states_fraction_zero_reveals_nothing():
    truth = _truth(10, 16)
    states = evaluation_states(truth, torch.arange(10), 0.0, seed=0)
    assert (states == UNKNOWN).all()
    assert states.shape == truth.shape


# ---------------------------------------------------------------------------------------------- loss


def _loss_problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    truth = torch.randint(-1, 2, (8, 6), generator=g)
    inputs = _sample(truth, seed=seed)
    logits = torch.randn(8, 6, generator=g, dtype=torch.float64) * 3
    return logits, truth, inputs


def _mean(terms: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    total, count = terms
    return total / count.clamp(min=1)


def test_scored_mask():
    truth = torch.tensor([[1, 0, -1, 1], [0, -1, 1, 0]])
    inputs = torch.tensor([[-1, 0, -1, -1], [-1, -1, 1, -1]])
    expected = torch.tensor([[True, False, False, True], [True, False, False, True]])
    assert torch.equal(scored_mask(truth, inputs), expected)


def test_bce_terms_equal_manual_sum_and_count():
    logits, truth, inputs = _loss_problem()
    scored = (truth != UNKNOWN) & (inputs == UNKNOWN)
    assert 0 < scored.sum() < scored.numel()
    p = torch.sigmoid(logits[scored])
    y = truth[scored].double()
    manual = -(y * torch.log(p) + (1 - y) * torch.log(1 - p))
    total, count = bce_terms(logits, truth, inputs)
    assert total.dim() == 0 and count.dim() == 0
    assert float(count) == int(scored.sum())
    torch.testing.assert_close(total, manual.sum(), atol=1e-10, rtol=1e-10)
    reference = F.binary_cross_entropy_with_logits(logits[scored], y)  # the masked mean
    torch.testing.assert_close(_mean((total, count)), reference, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("terms", [bce_terms, asl_terms])
def test_loss_ignores_revealed_and_unannotated_entries(terms):
    logits, truth, inputs = _loss_problem(1)
    scored = scored_mask(truth, inputs)
    total, count = terms(logits, truth, inputs)
    perturbed = logits.clone()
    perturbed[~scored] += torch.randn(int((~scored).sum()), dtype=torch.float64) * 50
    total2, count2 = terms(perturbed, truth, inputs)
    torch.testing.assert_close(total2, total, atol=1e-12, rtol=0)
    assert float(count2) == float(count)
    # ... whereas a scored entry does count.
    moved = logits.clone()
    row, col = scored.nonzero()[0].tolist()
    moved[row, col] += 5.0
    assert abs(float(terms(moved, truth, inputs)[0] - total)) > 1e-3


@pytest.mark.parametrize("terms", [bce_terms, asl_terms])
def test_loss_gradient_only_on_scored_entries(terms):
    logits, truth, inputs = _loss_problem(2)
    logits.requires_grad_(True)
    _mean(terms(logits, truth, inputs)).backward()
    scored = scored_mask(truth, inputs)
    assert (logits.grad[~scored] == 0).all()
    assert logits.grad[scored].abs().sum() > 0


@pytest.mark.parametrize("terms", [bce_terms, asl_terms])
def test_loss_is_zero_not_nan_when_nothing_is_scored(terms):
    logits = torch.randn(4, 5, requires_grad=True)
    truth = torch.randint(0, 2, (4, 5))
    total, count = terms(logits, truth, truth)  # everything revealed
    assert total.item() == 0.0 and count.item() == 0.0
    loss = _mean((total, count))
    assert loss.item() == 0.0
    unannotated = torch.full((4, 5), UNKNOWN)
    assert _mean(terms(logits, unannotated, unannotated)).item() == 0.0
    loss.backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad == 0).all()


def test_bce_terms_sum_over_split_batches():
    """Sums and counts add up across micro-batches, so the mean does not depend on how a batch is split."""
    logits, truth, inputs = _loss_problem(3)
    whole = _mean(bce_terms(logits, truth, inputs))
    parts = [bce_terms(logits[i : i + 3], truth[i : i + 3], inputs[i : i + 3]) for i in range(0, 8, 3)]
    split = sum(t for t, _ in parts) / sum(c for _, c in parts)
    torch.testing.assert_close(split, whole, atol=1e-12, rtol=1e-12)


def test_asl_without_focusing_or_clipping_is_bce():
    logits, truth, inputs = _loss_problem(4)
    asl = asl_terms(logits, truth, inputs, gamma_neg=0.0, gamma_pos=0.0, clip=0.0)
    bce = bce_terms(logits, truth, inputs)
    torch.testing.assert_close(asl[0], bce[0], atol=1e-6, rtol=1e-6)
    assert float(asl[1]) == float(bce[1])


def test_asl_discards_very_easy_negatives_and_downweights_easy_ones():
    truth = torch.tensor([[0, 0, 1]])
    inputs = torch.full_like(truth, UNKNOWN)
    easy = torch.tensor([[-4.0, -1.0, 2.0]], dtype=torch.float64)  # sigmoid(-4) = 0.018 < clip 0.05
    total, count = asl_terms(easy[:, :1], truth[:, :1], inputs[:, :1])
    assert total.item() == 0.0 and count.item() == 1.0
    # A moderately easy negative costs less than under BCE (focusing), a positive the same (gamma_pos 0).
    asl_neg = asl_terms(easy[:, 1:2], truth[:, 1:2], inputs[:, 1:2])[0]
    bce_neg = bce_terms(easy[:, 1:2], truth[:, 1:2], inputs[:, 1:2])[0]
    assert 0 < asl_neg < 0.5 * bce_neg
    asl_pos = asl_terms(easy[:, 2:], truth[:, 2:], inputs[:, 2:])[0]
    bce_pos = bce_terms(easy[:, 2:], truth[:, 2:], inputs[:, 2:])[0]
    torch.testing.assert_close(asl_pos, bce_pos, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    "options",
    [{}, {"gamma_neg": 2.0, "gamma_pos": 1.0, "clip": 0.1}],
    ids=["defaults", "focused-positives"],
)
def test_asl_equals_its_formula_entry_by_entry(options: dict) -> None:
    """-[t log(p) (1 - p)^g+ + (1 - t) log(m) (1 - m)^g-] with m = min(1 - p + clip, 1), summed over the
    scored entries; the defaults are the paper's (gamma- = 4, gamma+ = 0, clip = 0.05)."""
    logits, truth, inputs = _loss_problem(5)
    gamma_neg, gamma_pos = options.get("gamma_neg", 4.0), options.get("gamma_pos", 0.0)
    clip = options.get("clip", 0.05)
    p = torch.sigmoid(logits)
    m = (1 - p + clip).clamp(max=1)
    t = truth.clamp(min=0).to(p.dtype)
    terms = t * p.log() * (1 - p) ** gamma_pos + (1 - t) * m.log() * (1 - m) ** gamma_neg
    scored = (truth != UNKNOWN) & (inputs == UNKNOWN)
    total, count = asl_terms(logits, truth, inputs, **options)
    torch.testing.assert_close(total, -terms[scored].sum(), atol=1e-9, rtol=1e-9)
    assert total.dtype == logits.dtype and float(count) == float(scored.sum())


@pytest.mark.parametrize("terms", [bce_terms, asl_terms])
@pytest.mark.parametrize("logits_dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("truth_dtype", [torch.long, torch.float64])
def test_loss_terms_have_the_logits_dtype_whatever_the_truth_dtype(
    terms, logits_dtype: torch.dtype, truth_dtype: torch.dtype
) -> None:
    """Sum and count come back in the logits' dtype (a float count to all-reduce and divide by), and a
    float ground truth neither changes the loss nor promotes it to its own dtype."""
    logits, truth, inputs = _loss_problem(6)
    logits = logits.to(logits_dtype)
    reference, reference_count = terms(logits, truth, inputs)
    total, count = terms(logits, truth.to(truth_dtype), inputs.to(truth_dtype))
    assert total.dtype == count.dtype == logits_dtype
    assert float(count) == int(scored_mask(truth, inputs).sum()) == float(reference_count)
    torch.testing.assert_close(total, reference, atol=0, rtol=0)


def test_asl_clip_zero_or_below_turns_the_margin_off() -> None:
    """As in the reference ASL, a non-positive ``train.asl_clip`` means no margin: a negative value does not
    shift the negatives' probability."""
    logits, truth, inputs = _loss_problem(7)
    off = asl_terms(logits, truth, inputs, clip=0.0)
    for clip in (-0.1, -1.0):
        total, count = asl_terms(logits, truth, inputs, clip=clip)
        torch.testing.assert_close(total, off[0], atol=0, rtol=0)
        assert float(count) == float(off[1])
    p = torch.sigmoid(logits)
    t = truth.clamp(min=0).to(p.dtype)
    manual = t * p.log() + (1 - t) * (1 - p).log() * p**4  # gamma- = 4, gamma+ = 0, no margin
    torch.testing.assert_close(off[0], -manual[scored_mask(truth, inputs)].sum(), atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize(
    ("logit", "truth", "options"),
    [(-20.0, 0, {"gamma_neg": 0.5, "clip": 0.0}), (20.0, 1, {"gamma_pos": 0.5})],
    ids=["sure-negative", "sure-positive"],
)
def test_asl_gradient_stays_finite_for_fractional_focusing_on_very_sure_outputs(
    logit: float, truth: int, options: dict
) -> None:
    """0 < gamma < 1 on an output whose probability rounds to exactly 0 or 1 must not give a NaN gradient
    (the trainer would skip every such step and finally stop)."""
    logits = torch.tensor([[logit]], requires_grad=True)
    loss, count = asl_terms(logits, torch.tensor([[truth]]), torch.tensor([[UNKNOWN]]), **options)
    loss.backward()
    assert count == 1 and torch.isfinite(loss) and torch.isfinite(logits.grad).all()


# ------------------------------------------------------------------------------------ the draw's formula

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.parametrize(
    ("rows", "labels", "unannotated", "fraction", "extras"),
    [
        (16, 80, 0.0, 0.75, 0),  # fully annotated (COCO)
        (16, 2000, 0.995, 0.75, 0),  # sparse: about 10 of 2,000 annotated (Open Images)
        (33, 50, 0.5, 0.3, 0),
        (20, 40, 0.2, 1.0, 0),  # every annotation may be revealed: the count reaches A
        (24, 30, 0.1, 0.75, 12),  # CUB-312: only the last 12 labels (concepts) may be revealed
        (8, 6, 1.0, 0.75, 0),  # nothing annotated
    ],
)
def test_training_states_equal_the_per_image_argsort_formula(rows, labels, unannotated, fraction, extras):
    """The batched draw gives exactly the masks of the per-image formula it replaced (one generator per
    (seed, epoch, index): the count, then a key per label, the smallest keys revealed, ties by index), so
    trained models and the README's numbers do not move."""
    sys.path.insert(0, str(BENCHMARKS))
    from host_states import reference_training_states

    truth = _truth(rows, labels, seed=rows, unannotated=unannotated)
    revealable = torch.arange(labels) >= labels - extras if extras else None
    for seed, epoch in ((0, 1), (5, 7)):
        indices = torch.randperm(10_000, generator=torch.Generator().manual_seed(seed))[:rows]
        ours = sample_training_states(truth, indices, seed, epoch, fraction, revealable)
        assert torch.equal(ours, reference_training_states(truth, indices, seed, epoch, fraction, revealable))


def test_training_states_break_ties_between_equal_keys_by_label_index(monkeypatch) -> None:
    """Equal keys (all keys the same here) go to the lower label index, as the stable argsort did."""
    sys.path.insert(0, str(BENCHMARKS))
    from host_states import reference_training_states

    class FlatRng:
        def __init__(self, key: list[int]) -> None:
            self.count = key[-1] % 4

        def integers(self, low: int, high: int) -> int:
            return min(self.count, high - 1)

        def random(self, size: int) -> np.ndarray:
            return np.full(size, 0.5)

    monkeypatch.setattr(np.random, "default_rng", FlatRng)
    truth = _truth(8, 12, unannotated=0.3)
    ours = sample_training_states(truth, torch.arange(8), 0, 0)
    assert torch.equal(ours, reference_training_states(truth, torch.arange(8), 0, 0))
    assert (ours != UNKNOWN).sum() > 0


# ------------------------------------------------------------------------------------- kept label tokens


def _sparse_batch(rows: int = 6, labels: int = 200, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    truth = _truth(rows, labels, seed=seed, unannotated=0.97)
    return truth, _sample(truth, seed=seed, epoch=2)


def test_kept_labels_are_every_loss_or_known_token_plus_a_seeded_sample() -> None:
    truth, states = _sparse_batch()
    scored = 150  # the last 50 labels are extras without a loss
    keep = kept_labels(truth, states, scored, 64, seed=3, epoch=2, indices=[4, 9, 1, 7, 2, 8])
    assert keep.dtype == torch.long and torch.equal(keep, keep.unique())  # ascending, no repeats
    loss = scored_mask(truth[:, :scored], states[:, :scored]).any(0).nonzero().flatten()
    known = (states != UNKNOWN).any(0).nonzero().flatten()
    needed = set(loss.tolist()) | set(known.tolist())
    assert 0 < len(needed) < 64 and needed <= set(keep.tolist())
    assert len(keep) == 64  # filled up to the budget with tokens that carry nothing
    extras_annotated = (truth[:, scored:] != UNKNOWN).any(0) & ~(states[:, scored:] != UNKNOWN).any(0)
    assert extras_annotated.any()  # an extra label annotated but not revealed carries no loss:
    unneeded = set(keep.tolist()) - needed  # it is kept only by chance, like any other
    assert len(unneeded) == 64 - len(needed)

    again = kept_labels(truth, states, scored, 64, seed=3, epoch=2, indices=[4, 9, 1, 7, 2, 8])
    assert torch.equal(keep, again)  # a resumed run keeps the same tokens
    for seed, epoch, indices in ((4, 2, [4, 9, 1, 7, 2, 8]), (3, 3, [4, 9, 1, 7, 2, 8]), (3, 2, range(6))):
        other = kept_labels(truth, states, scored, 64, seed=seed, epoch=epoch, indices=list(indices))
        assert set(other.tolist()) >= needed and not torch.equal(other, keep)


def test_kept_labels_never_drop_a_needed_token_and_cap_at_every_label() -> None:
    truth, states = _sparse_batch()
    needed = kept_labels(truth, states, 200, 0, seed=0, epoch=0, indices=range(6))
    assert len(needed) == int(((truth != UNKNOWN) | (states != UNKNOWN)).any(0).sum())  # budget below
    every = kept_labels(truth, states, 200, 10_000, seed=0, epoch=0, indices=range(6))
    assert torch.equal(every, torch.arange(200))
