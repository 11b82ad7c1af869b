"""The one label-state encoding used everywhere in ctran.

A label's state is what the model is *told* about it: ``-1`` unknown, ``0`` known negative, ``1`` known
positive. Ground-truth annotations use the same values, where ``-1`` means the annotator did not say (such
entries are never revealed to the model and never scored). State tensors have shape ``(B, L)``.
"""

from __future__ import annotations

import torch

UNKNOWN = -1
NEGATIVE = 0
POSITIVE = 1


def state_index(states: torch.Tensor) -> torch.Tensor:
    """Map states {-1, 0, 1} to embedding rows {0, 1, 2} (unknown, negative, positive).

    This is the official C-Tran row order, so imported state embeddings need no permutation.
    """
    return (states + 1).long()


def check_states(states: torch.Tensor, num_labels: int, values: bool = True) -> None:
    """Raise a clear error for a malformed state tensor instead of an index error deep in an embedding.

    The shape check is free; the value check reads the tensor (min, max, rounding), which on a GPU waits
    for the device. ``values=False`` skips it where the states are valid by construction: training, whose
    states Label Mask Training draws (see ``CTran.label_tokens``).
    """
    if states.dim() != 2 or states.shape[1] != num_labels:
        raise ValueError(f"label states must have shape (B, {num_labels}), got {tuple(states.shape)}")
    if not values:
        return
    if states.is_floating_point() and not torch.equal(states, states.round()):
        raise ValueError("label states must be integers in {-1, 0, 1}")
    if states.numel() and (states.min() < UNKNOWN or states.max() > POSITIVE):
        raise ValueError("label states must be -1 (unknown), 0 (negative) or 1 (positive)")


def unknown_states(batch: int, num_labels: int, device: torch.device | str | None = None) -> torch.Tensor:
    """All-unknown states: regular inference."""
    return torch.full((batch, num_labels), UNKNOWN, dtype=torch.long, device=device)
