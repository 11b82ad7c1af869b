"""Open Images reader: human-verified labels in three states, stored sparsely."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import ctran
from ctran.data import openimages
from ctran.data.images import SparseLabels, collate_samples
from ctran.data.registry import build_dataset
from ctran.errors import CTranError
from ctran.training.evaluation import Setting, collect_scores, input_states

DESCRIPTIONS = 'LabelName,DisplayName\n/m/01,Cat\n/m/02,Dog\n/m/03,"Table, dining"\n/m/04,Cat\n/m/05,Bus\n'
LABELS = """ImageID,Source,LabelName,Confidence
000a1,verification,/m/01,1
000a1,verification,/m/02,0
000a1,crowdsource-verification,/m/02,1
000a1,verification,/m/05,1
000b2,verification,/m/03,0
000c3,verification,/m/05,0
000d4,verification,/m/04,1
000d4,verification,/m/01,0
"""


def make_openimages(root: Path) -> Path:
    (root / "validation").mkdir(parents=True)
    for image_id in ("000a1", "000b2", "000c3", "000d4"):
        Image.new("RGB", (40, 32), (10, 120, 240)).save(root / "validation" / f"{image_id}.jpg")
    (root / "oidv6-class-descriptions.csv").write_text(DESCRIPTIONS)
    (root / "oidv6-classes-trainable.txt").write_text("/m/01\n/m/02\n/m/03\n/m/04\n")  # /m/05 not trainable
    (root / "validation-annotations-human-imagelabels.csv").write_text(LABELS)
    return root


def test_three_states_sparse_storage_and_vocabulary(tmp_path: Path) -> None:
    dataset = openimages.load(make_openimages(tmp_path), "validation")
    assert dataset.target_names == (
        "Cat (/m/01)",
        "Dog",
        "Table, dining",
        "Cat (/m/04)",
    )  # shared names get MIDs
    assert [dataset.image_id(i) for i in range(len(dataset))] == [
        "000a1",
        "000b2",
        "000d4",
    ]  # 000c3: no class left
    assert isinstance(dataset.target_table, SparseLabels) and dataset.target_table.values.dtype == np.int8
    expected = [[1, 1, -1, -1], [-1, -1, 0, -1], [0, -1, -1, 1]]  # Dog: the positive of two verdicts wins
    np.testing.assert_array_equal(dataset.targets_matrix(), expected)
    assert dataset.target_table.values.size == 5  # only annotated pairs are stored
    assert any(
        "2 label rows of classes outside the vocabulary were skipped" in note for note in dataset.notes
    )
    assert dataset[2].targets.tolist() == [0, -1, -1, 1] and dataset.path(0).name == "000a1.jpg"


def test_absent_labels_are_never_revealed_nor_scored(tmp_path: Path) -> None:
    dataset = build_dataset(
        "openimages", make_openimages(tmp_path), "validation", image_size=32, scale_size=None
    )
    loader = DataLoader(dataset, batch_size=3, collate_fn=collate_samples)
    truth = torch.as_tensor(dataset.targets_matrix(), dtype=torch.long)
    states = input_states(Setting(known_fraction=0.75), truth, truth[:, :0], torch.arange(3), seed=0)
    assert ((states != -1) <= (truth != -1)).all()  # only annotated entries are ever revealed
    torch.manual_seed(0)
    model = ctran.build_model(4, backbone="small_cnn", dim=32, layers=1, heads=2)
    scores = collect_scores(model, loader, [Setting(), Setting(known_fraction=0.5)], seed=0)
    for setting, (_, scored_truth, scored, *_) in scores.items():
        assert torch.equal(scored_truth, truth)
        assert not scored[truth == -1].any(), setting  # absent -> not annotated -> never scored
    assert torch.equal(scores[Setting()][2], truth != -1)


def test_other_vocabularies_and_file_names(tmp_path: Path) -> None:
    root = make_openimages(tmp_path)
    (root / "oidv6-classes-trainable.txt").unlink()
    (root / "validation-annotations-human-imagelabels.csv").rename(
        root / "oidv7-val-annotations-human-imagelabels.csv"
    )
    dataset = openimages.load(root, "validation")  # vocabulary: every described class
    assert len(dataset.target_names) == 5 and len(dataset) == 4
    classes = tmp_path / "mine.txt"
    classes.write_text("/m/05\n")
    assert openimages.load(root, "validation", classes=str(classes)).targets_matrix().tolist() == [[1], [0]]


def test_malformed_rows_and_missing_files(tmp_path: Path) -> None:
    root = make_openimages(tmp_path)
    path = root / "validation-annotations-human-imagelabels.csv"
    path.write_text(LABELS.replace("000b2,verification,/m/03,0", "000b2,verification,/m/03,0.7"))
    with pytest.raises(CTranError, match=r"imagelabels\.csv line 6: Confidence must be 0 or 1, got '0\.7'"):
        openimages.load(root, "validation")
    path.write_text("ImageID,Label,Confidence\n000a1,/m/01,1\n")
    with pytest.raises(
        CTranError, match=r"imagelabels\.csv line 1: expected a header with ImageID,LabelName"
    ):
        openimages.load(root, "validation")
    with pytest.raises(CTranError, match=r"no test human-verified image labels file .* expected layout"):
        openimages.load(root, "test")
    (root / "oidv6-class-descriptions.csv").unlink()
    with pytest.raises(CTranError, match=r"no class descriptions file \(oidv7-class-descriptions\.csv or"):
        openimages.load(root, "validation")


def test_sparse_and_dense_tables_agree() -> None:
    rng = np.random.default_rng(0)
    dense = rng.integers(-1, 2, size=(50, 7)).astype(np.int8)
    rows, cols = np.nonzero(dense != -1)
    sparse = SparseLabels.from_entries(rows[::-1], cols[::-1], dense[rows, cols][::-1], 50, 7)
    np.testing.assert_array_equal(sparse.dense(), dense)
    pick = np.array([3, 0, 49, 3])
    np.testing.assert_array_equal(sparse.take(pick).dense(), dense[pick])
    np.testing.assert_array_equal(sparse.rows(10, 20, np.array([6, 1])), dense[10:20][:, [6, 1]])
    for value in (-1, 0, 1):
        np.testing.assert_array_equal(sparse.counts(value), (dense == value).sum(axis=0))
        np.testing.assert_array_equal(sparse.per_image(value), (dense == value).sum(axis=1))


def test_the_label_table_is_cached_and_rebuilt_when_the_csv_changes(tmp_path: Path, monkeypatch) -> None:
    root = make_openimages(tmp_path)
    first = openimages.load(root, "validation")
    caches = list((root / ".ctran-cache").glob("*.npz"))
    assert len(caches) == 1 and "cached in" in first.notes[1]
    assert not [p for p in (root / ".ctran-cache").iterdir() if p.suffix != ".npz"]  # no temporary file left
    parsed = []
    real = openimages.read_image_labels
    monkeypatch.setattr(openimages, "read_image_labels", lambda *a: parsed.append(a) or real(*a))
    again = openimages.load(root, "validation")
    assert not parsed and "listing loaded from the cache" in again.notes[1]  # no CSV parsed, no folder listed
    assert list(again.files) == list(first.files)
    np.testing.assert_array_equal(again.targets_matrix(), first.targets_matrix())
    listings = []
    real_listing = openimages.find_missing
    monkeypatch.setattr(openimages, "find_missing", lambda *a: listings.append(a) or real_listing(*a))
    (root / "validation" / "000d4.jpg").unlink()  # the folder changes: listed again, the table kept
    with pytest.warns(UserWarning, match="1 of 3 listed images are missing on disk"):
        relisted = openimages.load(root, "validation")
    assert len(listings) == 1 and not parsed and "images listed again" in relisted.notes[1]
    assert [relisted.image_id(i) for i in range(len(relisted))] == ["000a1", "000b2"]
    assert relisted.missing_files == [str(root / "validation" / "000d4.jpg")]
    with pytest.warns(UserWarning, match="missing on disk"):
        assert openimages.load(root, "validation").missing_files == relisted.missing_files
    assert len(listings) == 1
    Image.new("RGB", (40, 32)).save(root / "validation" / "000d4.jpg")
    csv_file = root / "validation-annotations-human-imagelabels.csv"
    csv_file.write_text(LABELS + "000c3,verification,/m/02,1\n")  # a new row: 000c3 now has a class
    changed = openimages.load(root, "validation")
    assert len(parsed) == 1 and [changed.image_id(i) for i in range(len(changed))][-1] == "000c3"
    openimages.load(root, "validation", classes=str(root / "oidv6-classes-trainable.txt"))
    assert len(parsed) == 1  # the same vocabulary from the same file: the cache of the changed CSV
    (root / "fewer.txt").write_text("/m/01\n/m/02\n")
    assert openimages.load(root, "validation", classes=str(root / "fewer.txt")).target_names == ("Cat", "Dog")
    assert len(parsed) == 2  # another vocabulary: its own table
    caches[0].write_bytes(caches[0].read_bytes()[:100])  # a cache cut short is built again, not trusted
    np.testing.assert_array_equal(
        openimages.load(root, "validation").targets_matrix(), changed.targets_matrix()
    )
    assert len(parsed) == 3


def test_the_cache_can_be_off_or_elsewhere(tmp_path: Path) -> None:
    root = make_openimages(tmp_path / "data")
    assert "cache=off" in openimages.load(root, "validation", cache="off").notes[1]
    assert not (root / ".ctran-cache").exists()
    openimages.load(root, "validation", cache=str(tmp_path / "elsewhere"))
    assert len(list((tmp_path / "elsewhere").glob("*.npz"))) == 1 and not (root / ".ctran-cache").exists()
