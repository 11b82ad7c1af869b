"""``ctran evaluate`` over several settings: one call equals one call per setting, every setting has its own
name, and the JSON says per label what the mean is made of."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch

import ctran
from ctran.cli import main
from ctran.metrics import METRIC_KEYS, average_precision
from ctran.report import SAME_ENTRIES, add_setting, flatten_settings, iter_settings, settings_by_name
from ctran.training.evaluation import Setting, collect_scores, evaluate
from ctran.training.loaders import eval_loader

SIZE = 96


def _evaluate(checkpoint: Path, json_path: Path, *flags: str) -> tuple[str, dict]:
    stdout = io.StringIO()
    argv = ["evaluate", "--checkpoint", str(checkpoint), "--size", str(SIZE), "--json", str(json_path)]
    with contextlib.redirect_stdout(stdout):
        assert main([*argv, *flags, "--quiet"]) == 0
    return stdout.getvalue(), json.loads(json_path.read_text())


def test_setting_names_are_distinct() -> None:
    settings = [Setting(f, e) for e in (False, True) for f in (0.0, 0.5)]
    settings += [Setting(reveal_extras=e, known_positives=0.5) for e in (False, True)]
    assert [s.name for s in settings] == [
        *("regular", "partial_0.5", "extra", "partial_0.5+extra"),
        *("positives_0.5", "positives_0.5+extra"),
    ]


def test_one_call_with_several_settings_equals_one_call_per_setting(digits_checkpoint, tmp_path) -> None:
    flags = ("--known", "0,0.25,0.5", "--known-positives", "0.5", "--extra", "both")
    table, together = _evaluate(digits_checkpoint, tmp_path / "all.json", *flags)
    names = ["regular", "partial_0.25", "partial_0.5", "positives_0.5"]
    names += ["extra", "partial_0.25+extra", "partial_0.5+extra", "positives_0.5+extra"]
    by_name = settings_by_name(together["settings"])
    assert list(by_name) == names
    assert together["setting"] == "regular" and together["mAP"] == by_name["regular"]["mAP"]
    separate_flags = {
        "regular": [],
        "partial_0.25": ["--known", "0.25"],
        "partial_0.5": ["--known", "0.5"],
        "positives_0.5": ["--known-positives", "0.5"],
        "extra": ["--extra"],
        "partial_0.25+extra": ["--known", "0.25", "--extra"],
        "partial_0.5+extra": ["--known", "0.5", "--extra"],
        "positives_0.5+extra": ["--known-positives", "0.5", "--extra"],
    }
    for name, flags in separate_flags.items():
        _, alone = _evaluate(digits_checkpoint, tmp_path / f"{name}.json", *flags)
        assert alone["setting"] == name
        # a told setting alone still runs the regular pass for its untold mAP, and reports only itself
        keys = (*METRIC_KEYS, "n_images", "n_labels_scored", "per_label")
        for key in keys if name == "regular" else (*keys, *SAME_ENTRIES):
            assert alone[key] == by_name[name][key], (name, key)
        assert len(list(iter_settings(alone["settings"]))) == 1
    # revealing labels changes what is scored: partial settings score fewer entries than regular
    assert by_name["partial_0.5+extra"]["mAP"] != by_name["partial_0.5"]["mAP"]
    for name in names:
        assert f"| {name} | {SIZE} | " in table  # each row says how many images it scored


def test_per_label_ap_and_counts_are_those_of_the_scored_entries(digits_checkpoint) -> None:
    model, _ = ctran.checkpoint.load_checkpoint(digits_checkpoint)
    dataset = ctran.data.load_digit_scenes("test", 0, SIZE)
    loader = eval_loader(dataset, 32)
    setting = Setting(0.5, True)
    results = evaluate(model, loader, [setting])
    metrics = results["partial_extra"]["0.5"]
    probs, truth, scored, _ = collect_scores(model, loader, [setting])[setting]
    ap = average_precision(probs, truth, scored)
    assert list(metrics["per_label"]) == list(dataset.target_names)
    for i, name in enumerate(dataset.target_names):
        entry = metrics["per_label"][name]
        assert entry["positives"] == int(((truth[:, i] == 1) & scored[:, i]).sum())
        assert entry["AP"] == (None if torch.isnan(ap[i]) else pytest.approx(100 * float(ap[i])))
    defined = [entry["AP"] for entry in metrics["per_label"].values() if entry["AP"] is not None]
    assert metrics["n_labels_scored"] == len(defined)
    assert metrics["mAP"] == pytest.approx(sum(defined) / len(defined))
    assert metrics["n_images"] == SIZE


def test_nested_results_round_trip_and_read_as_rows() -> None:
    results = {
        "regular": {"mAP": 1},
        "partial": {"0.5": {"mAP": 2}},
        "positives": {"0.25": {"mAP": 4}},
        "partial_extra": {"0.5": {"mAP": 3}},
        "positives_extra": {"0.75": {"mAP": 5}},
    }
    fields = [(0.0, False, 0.0), (0.5, False, 0.0), (0.0, False, 0.25), (0.5, True, 0.0), (0.0, True, 0.75)]
    assert list(iter_settings(results)) == [
        (*f, {"mAP": m}) for f, m in zip(fields, (1, 2, 4, 3, 5), strict=True)
    ]
    rebuilt = {}
    for known, extra, positives, metrics in iter_settings(results):
        add_setting(rebuilt, known, extra, metrics, positives)
    assert rebuilt == results
    assert list(settings_by_name(results)) == [Setting(*f).name for f in fields]
    assert list(flatten_settings(results, "C-Tran ")) == [
        "C-Tran regular",
        "C-Tran partial 50% known",
        "C-Tran 25% of present labels known",
        "C-Tran partial 50% known + extra",
        "C-Tran 75% of present labels known + extra",
    ]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--known", "0.5,1"], "--known"),
        (["--known", "a,b"], "--known"),
        (["--known", ""], "--known"),
        (["--known-positives", "0"], "--known-positives fractions must be in (0, 1]"),
        (["--known-positives", "1.5"], "--known-positives"),
        (["--known", "0.5", "--known-positives", ""], "--known-positives"),
    ],
)
def test_bad_settings_are_refused_before_loading(tmp_path, flags, message, capsys) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["evaluate", "--checkpoint", str(tmp_path / "missing.pt"), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "missing.pt" not in err


def _two_ranks(obj: tuple, ctx) -> list[tuple]:
    """``gather_to_main`` on rank 0 of two processes: each rank scored every other image, and the shards
    arrive so that concatenating them is out of image order."""
    assert ctx.world_size == 2
    return [tuple(t[1::2] for t in obj), tuple(t[0::2] for t in obj)]


def _rank_one(obj: tuple, ctx) -> None:
    """``gather_to_main`` on rank 1: it sends its rows and keeps nothing."""
    assert ctx.world_size == 2 and ctx.rank == 1
    return None


def test_scores_gathered_from_shards_are_put_back_in_image_order(digits_checkpoint, monkeypatch) -> None:
    """Rank 0 receives every shard block by block and scores them in image order: the same metrics and the
    same (probs, truth, scored, indices) as one process; rank 1 keeps nothing and takes rank 0's results."""
    from ctran.training import evaluation, trainer
    from ctran.training.distributed import DistContext

    model, _ = ctran.checkpoint.load_checkpoint(digits_checkpoint)
    loader = eval_loader(ctran.data.load_digit_scenes("test", 0, 40), 16)
    settings = [Setting(0.5, True), Setting(known_positives=0.5)]  # regular runs too, unreported
    alone = evaluate(model, loader, settings)  # all 16 labels in one block
    assert list(alone) == ["partial_extra", "positives"] and "untold_mAP" in alone["positives"]["0.5"]
    monkeypatch.setattr(ctran.metrics, "CHUNK_ENTRIES", 40 * 3)  # from here on, blocks of 3 labels
    direct = collect_scores(model, loader, settings)
    assert len(direct.blocks) == 6 and evaluate(model, loader, settings) == alone
    monkeypatch.setattr(evaluation, "gather_to_main", _two_ranks)
    monkeypatch.setattr(evaluation, "broadcast_from_main", lambda obj, ctx: obj)
    two = DistContext(world_size=2)
    assert evaluate(model, loader, settings, ctx=two) == alone
    gathered = trainer.gathered_scores(model, loader, settings, 0, two, "fp32")
    assert gathered.rows == 40 and gathered.indices.tolist() == list(range(40))
    for setting, scores in gathered.items():
        for got, want in zip(scores, direct[setting], strict=True):
            assert torch.equal(got, want)
    assert trainer.gathered_scores(model, loader, settings, 0, DistContext(), "fp32").keys() == direct.keys()

    monkeypatch.setattr(evaluation, "gather_to_main", _rank_one)
    monkeypatch.setattr(evaluation, "broadcast_from_main", lambda obj, ctx: alone if obj is None else "sent")
    assert trainer.gathered_scores(model, loader, settings, 0, DistContext(1, 2), "fp32") is None
    assert evaluate(model, loader, settings, ctx=DistContext(1, 2)) == alone


def test_evaluate_defaults_seed_zero_quiet_and_names_from_the_dataset(digits_checkpoint, capsys) -> None:
    model, _ = ctran.checkpoint.load_checkpoint(digits_checkpoint)
    dataset = ctran.data.load_digit_scenes("test", 0, 40)
    loader = eval_loader(dataset, 16)
    partial = [Setting(0.5)]
    default = evaluate(model, loader, partial)
    assert default == evaluate(model, loader, partial, seed=0) != evaluate(model, loader, partial, seed=1)
    assert capsys.readouterr().err == ""
    assert list(default["partial"]["0.5"]["per_label"]) == list(dataset.target_names)
    renamed = evaluate(model, loader, partial, label_names=[f"t{i}" for i in range(16)])
    assert list(renamed["partial"]["0.5"]["per_label"]) == [f"t{i}" for i in range(16)]


def test_evaluate_passes_device_precision_and_progress_on(digits_checkpoint, capsys) -> None:
    """``evaluate`` scores on the device and in the precision asked for, and shows a bar when asked to."""
    from ctran.metrics import multilabel_metrics

    model, _ = ctran.checkpoint.load_checkpoint(digits_checkpoint)
    dataset = ctran.data.load_digit_scenes("test", 0, 8)
    loader = eval_loader(dataset, 4)
    setting = Setting(0.5)
    results = evaluate(model, loader, [setting], device=torch.device("cpu"), precision="bf16", progress=True)
    assert "evaluate" in capsys.readouterr().err  # the tqdm bar, on stderr
    probs, truth, scored, _ = collect_scores(model, loader, [setting], 0, "cpu", "bf16")[setting]
    expected = multilabel_metrics(probs, truth, mask=scored, label_names=dataset.target_names)
    got = results["partial"]["0.5"]
    assert {key: value for key, value in got.items() if key not in SAME_ENTRIES} == expected


def test_evaluate_a_dataset_without_target_names(digits_checkpoint) -> None:
    """A dataset with no ``target_names`` (e.g. a ``Subset``) is still scored, only without per-label rows."""
    model, _ = ctran.checkpoint.load_checkpoint(digits_checkpoint)
    dataset = ctran.data.load_digit_scenes("test", 0, 24)
    subset = torch.utils.data.Subset(dataset, range(0, 24, 2))
    assert not hasattr(subset, "target_names")
    loader = eval_loader(subset, 8)
    plain = evaluate(model, loader, [Setting()])
    named = evaluate(model, loader, [Setting()], label_names=dataset.target_names)
    assert "per_label" not in plain["regular"]
    assert list(named["regular"].pop("per_label")) == list(dataset.target_names)
    assert plain == named and plain["regular"]["n_images"] == 12


def test_a_full_temporary_disk_is_a_one_line_error(digits_checkpoint, monkeypatch) -> None:
    """Scores wait in temporary files: a disk without room says where and what to set, not a traceback."""
    import errno

    from ctran.errors import CTranError
    from ctran.training import evaluation

    def full(*args) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    model, _ = ctran.checkpoint.load_checkpoint(digits_checkpoint)
    loader = eval_loader(ctran.data.load_digit_scenes("test", 0, 8), 8)
    monkeypatch.setattr(evaluation.os, "pwrite", full)
    with pytest.raises(CTranError, match="No space left on device; set TMPDIR"):
        evaluate(model, loader, [Setting()])
