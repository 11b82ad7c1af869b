"""CUB-312 from the CBM pickles and from the raw CUB_200_2011 release, and group intervention."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import ctran
from ctran.data import cub
from ctran.data.images import collate_samples
from ctran.data.registry import build_dataset, load_splits
from ctran.errors import CTranError
from ctran.training.intervention import draw_groups, group_intervention

# The 28 groups of the official configuration (paper notes section 9), ranges inclusive.
PAPER_GROUPS = [
    (0, 3), (4, 9), (10, 15), (16, 21), (22, 24), (25, 30), (31, 31), (32, 36), (37, 38), (39, 44),
    (45, 49), (50, 50), (51, 52), (53, 58), (59, 63), (64, 69), (70, 75), (76, 77), (78, 80), (81, 82),
    (83, 85), (86, 88), (89, 89), (90, 95), (96, 98), (99, 101), (102, 107), (108, 111),
]  # fmt: skip
# Raw release: (image id, class id, is_train); classes 1 and 2 only.
IMAGES = [(1, 1, 1), (2, 1, 1), (3, 2, 1), (4, 2, 1), (5, 1, 0), (6, 2, 0)]
A, B = cub.CBM_CONCEPTS[0] + 1, cub.CBM_CONCEPTS[1] + 1  # 1-based attribute ids of concepts 0 and 1
# (image id, attribute id) -> (is_present, certainty); every other attribute: absent, "definitely" (4).
VOTES = {
    (1, A): (1, 3), (2, A): (0, 3),  # class 1, concept 0: one present, one absent -> tie -> present
    (3, A): (0, 1), (4, A): (0, 3),  # class 2, concept 0: the not-visible absent is not counted -> absent
    (1, B): (0, 1), (2, B): (0, 1),  # class 1, concept 1: no counted vote -> tie -> present
    (3, B): (1, 2), (4, B): (0, 4),  # class 2, concept 1: tie -> present
    (5, A): (1, 1), (6, B): (0, 1),  # test images: instance labels, "not visible"
}  # fmt: skip


def _folder(class_id: int) -> str:
    return f"{class_id:03d}.Bird_{class_id}"


def make_release(root: Path) -> Path:
    """CUB_200_2011 with 200 classes, 6 images and all 312 attributes per image."""
    cub_dir = root / "CUB_200_2011"
    (cub_dir / "attributes").mkdir(parents=True)
    (cub_dir / "classes.txt").write_text("".join(f"{c} {_folder(c)}\n" for c in range(1, 201)))
    lines = {"images.txt": [], "image_class_labels.txt": [], "train_test_split.txt": []}
    for image_id, class_id, is_train in IMAGES:
        path = cub_dir / "images" / _folder(class_id) / f"Bird_{image_id}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (36, 30), (30 * image_id, 100, 50)).save(path)
        lines["images.txt"].append(f"{image_id} {_folder(class_id)}/Bird_{image_id}.jpg")
        lines["image_class_labels.txt"].append(f"{image_id} {class_id}")
        lines["train_test_split.txt"].append(f"{image_id} {is_train}")
    for name, rows in lines.items():
        (cub_dir / name).write_text("\n".join(rows) + "\n")
    votes = []
    for image_id, _, _ in IMAGES:
        for attribute in range(1, 313):
            present, certainty = VOTES.get((image_id, attribute), (0, 4))
            extra = " 0" if attribute == 7 else ""  # the release has a few lines with an extra field
            votes.append(f"{image_id} {attribute} {present} {certainty} 12.5{extra}")
    (cub_dir / "attributes" / "image_attribute_labels.txt").write_text("\n".join(votes) + "\n")
    return root


def make_pickles(root: Path) -> Path:
    """class_attr_data_10/{train,val,test}.pkl as CBM writes them: numpy ints, absolute paths."""
    make_release(root)
    folder = root / "class_attr_data_10"
    folder.mkdir()
    prefix = "/juice/scr/scr102/scr/thaonguyen/CUB_supervision/datasets/CUB_200_2011/images/"
    splits = {"train": [1, 2, 3], "val": [4], "test": [5, 6]}
    for split, ids in splits.items():
        entries = []
        for image_id in ids:
            class_id = IMAGES[image_id - 1][1]
            concepts = np.zeros(112, dtype=np.int64)
            concepts[image_id % 112] = 1
            certainty = [4] * 312
            certainty[cub.CBM_CONCEPTS[5]] = 1  # concept 5 "not visible" for every image
            certainty[5] = 2  # attribute 5 is not a CBM concept: must not leak into concept 5
            entries.append({
                "id": image_id,
                "img_path": f"{prefix}{_folder(class_id)}/Bird_{image_id}.jpg",
                "class_label": np.int64(class_id - 1),
                "attribute_label": list(concepts),
                "attribute_certainty": certainty,
            })  # fmt: skip
        with open(folder / f"{split}.pkl", "wb") as handle:
            pickle.dump(entries, handle)
    return root


def test_concept_groups_are_the_official_28() -> None:
    assert len(cub.ATTRIBUTE_NAMES) == 312 and len(cub.CONCEPT_NAMES) == 112
    assert [(g[0], g[-1]) for g in cub.concept_groups()] == PAPER_GROUPS
    assert all(g == list(range(g[0], g[-1] + 1)) for g in cub.concept_groups())
    assert cub.CONCEPT_NAMES[0] == "has_bill_shape::dagger" and cub.CONCEPT_NAMES[-1].startswith(
        "has_wing_pattern"
    )


def test_cbm_rule_votes_ties_and_not_visible() -> None:
    classes = np.array([0, 0, 1, 1, 1])
    labels = np.array([[1, 0], [0, 0], [0, 1], [0, 1], [0, 0]])
    certainty = np.array([[4, 1], [4, 1], [1, 4], [1, 4], [4, 4]])
    majority = cub.class_attributes(classes, labels, certainty)
    assert majority.shape == (200, 2)
    assert majority[0].tolist() == [
        1,
        1,
    ]  # tie 1-1 -> present; both absents not visible -> 0-0 tie -> present
    assert majority[1].tolist() == [0, 1]  # only the visible absent counts -> absent; 2 present vs 1 absent
    assert majority[2].tolist() == [1, 1]  # a class without images: 0-0 ties
    assert cub.cbm_selection(np.array([[1, 0, 1]] * 10 + [[0, 0, 1]]), min_classes=10).tolist() == [0, 2]


def test_pickles(tmp_path: Path) -> None:
    root = make_pickles(tmp_path)
    train = cub.load(root, "train")
    assert train.target_names[:2] == ("Bird_1", "Bird_2") and len(train.target_names) == 200
    assert train.extra_names == cub.CONCEPT_NAMES and train.extra_groups == cub.concept_groups()
    assert train.image_id(2) == "002.Bird_2/Bird_3.jpg" and train.missing_files == []
    np.testing.assert_array_equal(train.targets_matrix().argmax(axis=1), [0, 0, 1])
    assert train.targets_matrix().sum() == 3 and train.extras_matrix()[1].nonzero()[0].tolist() == [2]
    assert train.extra_certainty[:, 5].tolist() == [1, 1, 1] and train.extra_certainty[:, 4].tolist() == [
        4,
        4,
        4,
    ]
    assert [len(cub.load(root, split)) for split in ("val", "test")] == [1, 2]
    sample = cub.load(tmp_path / "CUB_200_2011", "test")[1]  # the CUB_200_2011 folder itself is accepted
    assert sample.targets.shape == (200,) and sample.extras.shape == (112,) and sample.targets[1] == 1


def test_pickle_errors(tmp_path: Path) -> None:
    root = make_pickles(tmp_path)
    path = root / "class_attr_data_10" / "val.pkl"
    with open(path, "wb") as handle:
        pickle.dump([{"img_path": "a/b.jpg", "class_label": 3, "attribute_label": [0] * 7}], handle)
    with pytest.raises(CTranError, match=r"val\.pkl: entry 0 is malformed .*expected 112 or 312 values"):
        cub.load(root, "val")

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(path, "wb") as handle:
        pickle.dump([Payload()], handle)
    with pytest.raises(CTranError, match=r"val\.pkl: not a CBM pickle \(refusing to load .*system\)"):
        cub.load(root, "val")


def test_raw_release_with_the_cbm_rule(tmp_path: Path) -> None:
    root = make_release(tmp_path)
    train = cub.load(root, "train")  # no pickles: source=auto reads the raw files
    assert len(train) == 4 and train.image_id(0) == "001.Bird_1/Bird_1.jpg"
    np.testing.assert_array_equal(train.extras_matrix()[:, :3], [[1, 1, 0], [1, 1, 0], [0, 1, 0], [0, 1, 0]])
    # the 198 classes without images tie 0-0 on every attribute, so (by the CBM rule) all 312 are kept
    assert any("selects 312 attributes, not the published 112" in note for note in train.notes)
    test = cub.load(root, "test", attributes="instance")
    np.testing.assert_array_equal(test.extras_matrix()[:, :2], [[1, 0], [0, 0]])
    np.testing.assert_array_equal(test.extra_certainty[:, :2], [[1, 4], [4, 1]])
    np.testing.assert_array_equal(
        cub.load(root, "test").extras_matrix()[:, :2], [[1, 1], [0, 1]]
    )  # class votes
    with pytest.raises(CTranError, match="the raw CUB release has splits train and test, not 'val'"):
        cub.load(root, "val")
    splits = load_splits("cub", root, image_size=32, scale_size=None, val_fraction=0.25)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [3, 1, 2]


def test_raw_release_errors(tmp_path: Path) -> None:
    root = make_release(tmp_path)
    path = root / "CUB_200_2011" / "attributes" / "image_attribute_labels.txt"
    lines = path.read_text().splitlines()
    lines[9] = "1 10 yes 4 1.0"
    path.write_text("\n".join(lines))
    cub.read_release.cache_clear()
    with pytest.raises(
        CTranError, match=r"image_attribute_labels\.txt line 10: expected '<image id> <attribute id>"
    ):
        cub.load(root, "train")
    (root / "CUB_200_2011" / "classes.txt").unlink()
    with pytest.raises(CTranError, match=r"missing .*classes\.txt; expected layout: \{CUB_200_2011/"):
        cub.load(root, "train")


class Recorder(torch.nn.Module):
    """A stand-in model that records what intervention feeds it and always predicts class 1."""

    def __init__(self) -> None:
        super().__init__()
        self.encoded, self.states = 0, []

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self.encoded += 1
        return images.mean(dim=(2, 3))[:, None]  # (B, 1, 3)

    def decode(self, tokens: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        self.states.append(states.clone())
        logits = torch.zeros(states.shape, dtype=torch.float32)
        logits[:, 1] = 5.0
        return logits


def test_group_intervention_protocol(tmp_path: Path) -> None:
    root = make_pickles(tmp_path)
    dataset = build_dataset("cub", root, "train", image_size=32, scale_size=None)  # classes 0, 0, 1
    loader = DataLoader(dataset, batch_size=2, collate_fn=collate_samples)
    model = Recorder()
    result = group_intervention(model, loader, dataset.extra_groups, seed=3)
    assert model.encoded == 2 and len(model.states) == 2 * 29  # each batch encoded once, decoded 29 times
    assert result["k"] == list(range(29)) and len(result["class_accuracy"]) == 29
    assert (
        result["class_accuracy"] == [pytest.approx(100 / 3)] * 29
    )  # always class 1: right for 1 of 3 images
    assert result["groups"][10] == draw_groups(28, 10, 3) and len(set(result["groups"][10])) == 10
    truth = torch.as_tensor(dataset.extras_matrix(), dtype=torch.long)
    for k in (0, 10, 28):
        states = torch.cat([model.states[k], model.states[29 + k]])  # batches 1 and 2, same k
        assert (states[:, :200] == -1).all()  # class labels are never revealed
        concepts = [
            i for g in result["groups"][k] for i in dataset.extra_groups[g] if i != 5
        ]  # 5: not visible
        shown = torch.zeros(112, dtype=torch.bool)
        shown[concepts] = True
        assert torch.equal(states[:, 200:], torch.where(shown, truth, -1))
    assert result["revealed_fraction"][0] == 0 and result["revealed_fraction"][28] == pytest.approx(111 / 112)
    assert draw_groups(28, 10, 3) != draw_groups(28, 10, 4)


def test_group_intervention_runs_a_real_model(tmp_path: Path) -> None:
    root = make_pickles(tmp_path)
    dataset = build_dataset("cub", root, "test", image_size=32, scale_size=None)
    torch.manual_seed(0)
    model = ctran.build_model(312, backbone="small_cnn", dim=32, layers=1, heads=2)
    loader = DataLoader(dataset, batch_size=2, collate_fn=collate_samples)
    result = group_intervention(model, loader, dataset.extra_groups, seed=0)
    assert len(result["class_accuracy"]) == len(result["mAP"]) == 29
    assert all(0 <= a <= 100 for a in result["class_accuracy"]) and all(0 <= m <= 100 for m in result["mAP"])
    assert result["revealed_fraction"][28] == pytest.approx(111 / 112)  # concept 5 is never visible
