"""Which label should a person tell the model next? Scores for ``Predictor.suggest``.

Two rankings of the unknown target labels of one image:

- ``uncertainty`` (the cheap one: no extra model call): the label's own binary entropy, so the label whose
  probability is closest to 1/2 comes first;
- ``information``: how much knowing the label is expected to reduce the uncertainty of the *other* unknown
  labels. With p = P(label present | what is known), the model is re-conditioned on both answers, and

      information = H(others now) - [p * H(others | yes) + (1 - p) * H(others | no)]

  where H is the sum of the others' binary entropies (bits). The answers are weighted by the model's own
  probability of each, so a label it is sure about scores little however much a surprise would change.

Both are in bits. ``information`` costs 2C re-conditionings for C candidates; at the paper's scale a caller
can bound that by scoring only the most uncertain few (``Predictor.suggest(candidates=...)``), while the
others' uncertainty still counts every unknown label. The caller runs the model; this module only turns
probabilities into scores and rankings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ctran.states import NEGATIVE, POSITIVE

METHODS = ("information", "uncertainty")


@dataclass
class Suggestion:
    """One label worth asking about, with why."""

    label: str
    probability: float  # P(present | what is known)
    uncertainty: float  # its own binary entropy, bits (1 at p = 0.5)
    information: float | None = None  # expected entropy reduction of the other unknown labels, bits

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "probability": self.probability,
            "uncertainty": self.uncertainty,
            "information": self.information,
        }


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """Elementwise entropy of Bernoulli(p), in bits; 0 at p in {0, 1}."""
    p = p.double()
    return (torch.special.entr(p) + torch.special.entr(1 - p)) / math.log(2)


def hypotheses(states: torch.Tensor, candidates: Sequence[int]) -> torch.Tensor:
    """One image's states (L,) -> (2C, L): row 2c tells candidate c present, row 2c + 1 absent."""
    rows = states.repeat(2 * len(candidates), 1)  # (2C, L)
    index = torch.arange(len(candidates))
    rows[2 * index, list(candidates)] = POSITIVE
    rows[2 * index + 1, list(candidates)] = NEGATIVE
    return rows


def expected_information(now: torch.Tensor, told: torch.Tensor, asked: Sequence[int]) -> torch.Tensor:
    """Expected entropy reduction of the others (C,), bits, for C candidates.

    ``now`` (U,): probabilities of the U unknown labels; ``told`` (2C, U): the same labels after each
    ``hypotheses`` row; ``asked`` (C,): each candidate's position among the U. A candidate's own label is
    left out of its sums.
    """
    count, unknown = len(asked), now.shape[0]
    others = torch.ones(count, unknown, dtype=torch.bool)  # (C, U): row c sums over the labels other than c
    others[torch.arange(count), list(asked)] = False
    before = binary_entropy(now).mul(others).sum(-1)  # (C,)
    after = binary_entropy(told).view(count, 2, unknown).mul(others[:, None]).sum(-1)  # (C, 2): yes, no
    p = now.double()[list(asked)]
    return before - (p * after[:, 0] + (1 - p) * after[:, 1])


def rank(
    names: Sequence[str],
    probabilities: torch.Tensor,
    information: torch.Tensor | None,
    k: int,
) -> list[Suggestion]:
    """The k best candidates, by ``information`` when given, else by uncertainty; label order breaks ties."""
    uncertainty = binary_entropy(probabilities)
    score = uncertainty if information is None else information
    order = sorted(range(len(names)), key=lambda i: (-float(score[i]), i))[:k]
    return [
        Suggestion(
            names[i],
            float(probabilities[i]),
            float(uncertainty[i]),
            None if information is None else float(information[i]),
        )
        for i in order
    ]
