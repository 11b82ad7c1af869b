"""How much telling the model something moved its other predictions: scores for ``Predictor.influence``.

C-Tran's promise is that known labels change the others; this shows a user by how much, for one image with
known labels K (targets and/or extras). Over the image's cached tokens the model decodes K + 2 rows of
label states, in one batch:

- nothing known, and all of K known: the difference is what telling the model K did to each other target
  label (``overall``: probability without, with, and the change);
- all of K with each known label k left out in turn (leave-one-out): all of K minus K without k is k's own
  effect *given the others* (``by_label``). Leaving one out, rather than telling each label alone, asks
  what k adds to everything else the user said, which is the question "did telling it *this* matter?";
  labels interact through attention, so these effects need not add up to the overall change.

Changes are ranked by their size, largest first. The caller runs the model; this module only builds the
state rows and turns probabilities into ranked changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ctran.states import UNKNOWN

DEFAULT_TOP = 5


@dataclass
class Change:
    """One target label's probability without and with what was told."""

    label: str
    p_without: float
    p_with: float
    delta: float  # p_with - p_without

    def to_dict(self) -> dict:
        return {"label": self.label, "p_without": self.p_without, "p_with": self.p_with, "delta": self.delta}


@dataclass
class Influence:
    """One image: the unknown target labels the known ones moved most, overall and per known label."""

    overall: list[Change] = field(default_factory=list)  # nothing told -> everything told
    by_label: dict[str, list[Change]] = field(default_factory=dict)  # all told but this label -> all told

    def to_dict(self) -> dict:
        return {
            "overall": [c.to_dict() for c in self.overall],
            "by_label": {name: [c.to_dict() for c in changes] for name, changes in self.by_label.items()},
        }


def influence_rows(states: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """One image's states (L,) -> (K + 2, L) rows and the K known positions (label order).

    Row 0 knows nothing, row 1 is ``states``, row 2 + k is ``states`` with the k-th known label unknown.
    """
    known = (states != UNKNOWN).nonzero().flatten().tolist()
    rows = states.repeat(len(known) + 2, 1)  # (K + 2, L)
    rows[0] = UNKNOWN
    rows[2 + torch.arange(len(known)), known] = UNKNOWN
    return rows, known


def summarise(
    probs: torch.Tensor, known: Sequence[int], label_names: Sequence[str], targets: int, top: int
) -> Influence:
    """Probabilities (K + 2, L) of the ``influence_rows`` -> the ``top`` largest changes of the unknown
    target labels (the first ``targets`` labels), overall and for each known label."""
    told_set = set(known)
    others = [j for j in range(targets) if j not in told_set]
    names = [label_names[j] for j in others]
    told = probs[1, others]  # (U,)
    by_label = {
        label_names[k]: largest_changes(names, probs[2 + i, others], told, top) for i, k in enumerate(known)
    }
    return Influence(largest_changes(names, probs[0, others], told, top), by_label)


def largest_changes(
    names: Sequence[str], without: torch.Tensor, with_: torch.Tensor, top: int
) -> list[Change]:
    """The ``top`` labels whose probability moved most from ``without`` (U,) to ``with_`` (U,), largest
    ``|delta|`` first; label order breaks ties."""
    delta = with_ - without  # (U,)
    order = sorted(range(len(names)), key=lambda i: (-abs(float(delta[i])), i))[:top]
    return [Change(names[i], float(without[i]), float(with_[i]), float(delta[i])) for i in order]
