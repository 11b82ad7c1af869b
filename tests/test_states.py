"""ctran.states: the single {-1, 0, 1} label-state encoding and its validation."""

from __future__ import annotations

import pytest
import torch

from ctran.states import NEGATIVE, POSITIVE, UNKNOWN, check_states, state_index, unknown_states


def test_constants():
    assert (UNKNOWN, NEGATIVE, POSITIVE) == (-1, 0, 1)


def test_state_index_follows_official_row_order():
    states = torch.tensor([[UNKNOWN, NEGATIVE, POSITIVE], [POSITIVE, UNKNOWN, NEGATIVE]])
    index = state_index(states)
    assert index.dtype == torch.long
    assert index.tolist() == [[0, 1, 2], [2, 0, 1]]


@pytest.mark.parametrize("dtype", [torch.int8, torch.int32, torch.long, torch.float32, torch.float64])
def test_state_index_any_numeric_dtype(dtype):
    states = torch.tensor([[-1, 0, 1]], dtype=dtype)
    index = state_index(states)
    assert index.dtype == torch.long
    assert index.tolist() == [[0, 1, 2]]


@pytest.mark.parametrize(
    "states",
    [
        torch.tensor([[-1, 0, 1, 1], [0, 0, -1, 1]]),
        torch.tensor([[-1.0, 0.0, 1.0, 1.0]]),  # integer-valued floats are fine
        torch.tensor([[-1, 0, 1, 0]], dtype=torch.int8),
        torch.empty(0, 4, dtype=torch.long),  # an empty batch
    ],
)
def test_check_states_accepts_valid(states):
    check_states(states, 4)  # no exception


@pytest.mark.parametrize(
    "shape",
    [(4,), (2, 3), (2, 5), (2, 4, 1), (1, 1, 4)],
)
def test_check_states_rejects_wrong_shape(shape):
    with pytest.raises(ValueError, match=r"shape \(B, 4\)"):
        check_states(torch.zeros(shape, dtype=torch.long), 4)


@pytest.mark.parametrize("bad", [2, -2, 5, -100])
def test_check_states_rejects_out_of_range(bad):
    states = torch.tensor([[0, 1, -1, bad]])
    with pytest.raises(ValueError, match="-1 \\(unknown\\)"):
        check_states(states, 4)


@pytest.mark.parametrize("bad", [0.5, -0.5, 0.999, float("nan")])
def test_check_states_rejects_non_integer_floats(bad):
    states = torch.tensor([[0.0, 1.0, -1.0, bad]])
    with pytest.raises(ValueError, match="integers"):
        check_states(states, 4)


def test_check_states_rejects_out_of_range_float():
    with pytest.raises(ValueError):
        check_states(torch.tensor([[0.0, 2.0]]), 2)


def test_unknown_states():
    states = unknown_states(3, 5)
    assert states.shape == (3, 5)
    assert states.dtype == torch.long
    assert states.device.type == "cpu"
    assert (states == UNKNOWN).all()
    check_states(states, 5)
    assert (state_index(states) == 0).all()


def test_unknown_states_device_argument():
    assert unknown_states(2, 2, device="cpu").device.type == "cpu"
    assert unknown_states(0, 7).shape == (0, 7)


def test_check_states_without_values_checks_the_shape_only():
    """``values=False`` (training: states drawn by Label Mask Training) never reads the tensor."""
    check_states(torch.tensor([[0, 1, -1, 7]]), 4, values=False)
    with pytest.raises(ValueError, match=r"shape \(B, 4\)"):
        check_states(torch.zeros(2, 3, dtype=torch.long), 4, values=False)
