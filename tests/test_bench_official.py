"""Timing against the official C-Tran code: skipped with a message without a checkout, and with one, the
official ``CTranModel`` is imported from it, loaded with our weights and checked against ours.

No official checkout is shipped or fetched: the tests write a stand-in ``models/CTran.py`` with the official
constructor, key layout and outputs (built on ``benchmarks/reference.py``), and one that calls ``.cuda()``
as the unedited official forward does.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import official_code  # noqa: E402
import run_all  # noqa: E402
import vs_official  # noqa: E402
from common import make_model  # noqa: E402

STAND_IN = '''
import torchvision.models as models

from reference import ReferenceCTran


class CTranModel(ReferenceCTran):
    """The official constructor and outputs over the re-implemented forward pass (a test stand-in)."""

    def __init__(self, num_labels, use_lmt, pos_emb=False, layers=3, heads=4, dropout=0.1, int_loss=0,
                 no_x_features=False):
        super().__init__(models.resnet101(pretrained=True), num_labels, 2048, layers, heads, 2048)

    def forward(self, images, mask):
        logits, attentions = super().forward(images, {device_edit})
        return logits, None, attentions
'''


def _checkout(folder: Path, device_edit: str = "mask") -> Path:
    (folder / "models").mkdir(parents=True)
    (folder / "models" / "__init__.py").write_text("from .CTran import CTranModel\n")
    (folder / "models" / "CTran.py").write_text(STAND_IN.format(device_edit=device_edit))
    return folder


@pytest.fixture(autouse=True)
def _fresh_models_package(monkeypatch):
    """Each test imports its own checkout's ``models`` package."""
    monkeypatch.delenv(official_code.ENV, raising=False)
    yield
    for name in [n for n in sys.modules if n == "models" or n.startswith("models.")]:
        del sys.modules[name]


def test_without_a_checkout_it_says_so_and_skips(tmp_path: Path, capsys) -> None:
    out = tmp_path / "vs_official.json"
    assert vs_official.main(["--out", str(out)]) is None
    said = capsys.readouterr().out
    assert "no official C-Tran checkout: set CTRAN_OFFICIAL=/path/to/C-Tran" in said and "skipped" in said
    assert not out.exists()
    assert "--official" not in run_all.sub_args(run_all.parse_args([]), "vs_official")
    passed_on = run_all.sub_args(run_all.parse_args(["--official", "/src/C-Tran"]), "vs_official")
    assert passed_on[-2:] == ["--official", "/src/C-Tran"]


def test_a_folder_that_is_not_a_checkout_is_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(official_code.ENV, str(tmp_path))
    with pytest.raises(SystemExit, match="not a C-Tran checkout"):
        vs_official.main([])


def test_rows_are_timed_against_the_official_model_holding_our_weights(tmp_path: Path) -> None:
    """The official model is imported from the checkout, loaded with our weights (its unused ``fc`` left
    out), checked against ours, and each row says what it was timed against and on how many threads."""
    checkout = _checkout(tmp_path / "C-Tran")
    argv = ["--official", str(checkout), "--settings", "64x4x1", "--variants", "fp32", "--repeats", "1"]
    result = vs_official.main([*argv, "--threads", "1", "--quick", "--out", str(tmp_path / "r.json")])
    [row] = result["rows"]  # timed only once ours and the official model gave the same logits
    assert row["name"] == "official_r101_64_L4_b1_fp32" and row["max_abs_logit_diff_vs_ref"] <= 1e-4
    assert row["against"] == result["against"] == official_code.describe(checkout.resolve())
    assert row["against"].startswith(f"official C-Tran code ({checkout.resolve()} @ ")
    assert row["threads"] == 1 and (tmp_path / "r.json").is_file()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the device edits matter where there is no CUDA")
def test_an_unedited_checkout_on_a_cpu_is_told_which_edits_to_make(tmp_path: Path) -> None:
    checkout = _checkout(tmp_path / "C-Tran", device_edit="mask.cuda()")
    edits = r"make its three \.cuda\(\) calls in models/CTran\.py device-neutral"
    with pytest.raises(SystemExit, match=edits):
        official_code.official_from(make_model(4), checkout)
