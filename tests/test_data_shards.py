"""Tar shards (issue 25): ``ctran data pack``, ``data.format: shards`` and the loaders that stream them."""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ctran.cli import main
from ctran.data.digit_scenes import CONTEXT_NAMES, DIGIT_NAMES, TAG_NAMES, generate_split
from ctran.data.registry import build_dataset
from ctran.data.shards import decode_states, encode_states
from ctran.errors import CTranError
from ctran.training.distributed import DistContext
from ctran.training.loaders import ShardStream, eval_loader, set_epoch, train_loader
from test_data_openimages import make_openimages

SIZES = {"train": 96, "val": 48, "test": 48}


def write_digit_folder(root: Path, sizes: dict[str, int], seed: int = 0) -> Path:
    """The digit scenes as your own data: PNG files, train/val/test.csv naming every label's state."""
    root.mkdir(parents=True)
    names = DIGIT_NAMES + TAG_NAMES
    (root / "labels.txt").write_text("\n".join(names) + "\n")  # the scenes' own label order
    (root / "extras.txt").write_text("\n".join(CONTEXT_NAMES) + "\n")
    for split, size in sizes.items():
        scenes = generate_split(split, seed, size)
        rows = ["image,labels,extra"]
        for i in range(size):
            Image.fromarray(scenes.images[i]).save(root / f"{split}{i}.png")
            labels = ";".join(n if v else f"-{n}" for n, v in zip(names, scenes.targets[i], strict=True))
            extra = ";".join(
                n if v else f"-{n}" for n, v in zip(CONTEXT_NAMES, scenes.extras[i], strict=True)
            )
            rows.append(f"{split}{i}.png,{labels},{extra}")
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return root


def pack(root: Path, out: Path, *extra: str) -> dict:
    """``ctran data pack`` in this process; its JSON summary."""
    args = ["data", "pack", "--format", "csv", "--root", str(root), "--out", str(out), "--quiet", *extra]
    assert main(args) == 0
    return json.loads((out / "train.json").read_text())


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_digit_folder(tmp_path_factory.mktemp("digits") / "data", SIZES)


@pytest.fixture(scope="module")
def packed(digits: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "packed"
    pack(digits, out, "--shard-size", "24")
    return out


def _members(shard: Path) -> dict[str, bytes]:
    with tarfile.open(shard) as tar:
        return {member.name: tar.extractfile(member).read() for member in tar.getmembers()}


def test_states_are_stored_as_the_labels_that_differ_from_the_rest() -> None:
    dense = np.array([0, 1, 0, 0, -1, 0], dtype=np.int8)
    sparse = np.full(9605, -1, dtype=np.int8)
    sparse[[3, 700]], sparse[9000] = 1, 0
    assert encode_states(dense) == {"rest": 0, "-1": [4], "1": [1]}
    assert encode_states(sparse) == {"rest": -1, "0": [9000], "1": [3, 700]}
    for row in (dense, sparse, np.zeros(0, dtype=np.int8)):
        assert decode_states(json.loads(json.dumps(encode_states(row))), len(row)).tolist() == row.tolist()


def test_pack_writes_each_image_as_stored_with_its_states_and_the_vocabulary_once(
    digits: Path, packed: Path
) -> None:
    folder = build_dataset("csv", digits, "train")
    manifest = json.loads((packed / "train.json").read_text())
    assert manifest["urls"] == "train-{000000..000003}.tar" and manifest["shard_samples"] == [24] * 4
    assert manifest["samples"] == SIZES["train"] and manifest["settings"]["source"]["format"] == "csv"
    vocabulary = json.loads((packed / "vocabulary.json").read_text())
    assert vocabulary["target_names"] == list(folder.target_names) == list(DIGIT_NAMES + TAG_NAMES)
    assert vocabulary["extra_names"] == list(CONTEXT_NAMES)
    members = _members(packed / "train-000001.tar")
    assert sorted(members)[:2] == ["000000024.json", "000000024.png"] and len(members) == 2 * 24
    record = json.loads(members["000000024.json"])
    assert set(record) == {"index", "id", "source", "targets", "extras"}  # names only in vocabulary.json
    assert record["index"] == 24 and record["id"] == "train24.png"
    assert members["000000024.png"] == (digits / "train24.png").read_bytes()  # the bytes as stored
    assert decode_states(record["targets"], 16).tolist() == folder.target_table.row(24).tolist()
    assert decode_states(record["extras"], 4).tolist() == folder.extra_table.row(24).tolist()
    assert not list(packed.glob(".*"))  # no temporary file or pack state left behind


def test_a_second_dataset_of_other_labels_is_refused_in_the_same_folder(packed: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    Image.new("RGB", (8, 8)).save(other / "a.png")
    (other / "train.csv").write_text("image,labels\na.png,cat\n")
    out = tmp_path / "out"
    shutil.copytree(packed, out)
    with pytest.raises(CTranError, match="holds shards of another vocabulary"):
        from ctran.data.pack import pack_split

        pack_split(build_dataset("csv", other, "train"), out, "extra", {"format": "csv"})


@pytest.mark.slow
def test_training_on_the_shards_gives_the_metrics_of_training_on_the_folder(
    digits: Path, packed: Path, tmp_path: Path
) -> None:
    """One step per epoch (batch = the 96 training images): the shard stream reads each image once per
    epoch with its index, so crops, flips and label masks are the folder's and only the order within the
    batch differs (no dropout, whose masks follow positions). Losses agree to float rounding."""
    common = ["train", "--config", "digits-tiny", "--quiet", "data.image_size=48", "data.scale_size=null"]
    common += ["train.epochs=3", "model.dim=32", "model.dropout=0", "train.batch_size=96"]
    common += ["eval.batch_size=48", "data.num_workers=0"]
    for name, data in (("folder", ["--data", "csv", "--data-root", str(digits)]), ("shards", [])):
        data = data or ["--data", "shards", "--data-root", str(packed)]
        assert main([*common, *data, "--out", str(tmp_path / name)]) == 0
    metrics = {
        name: json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("folder", "shards")
    }
    rows = {
        name: list(csv.DictReader(io.StringIO((tmp_path / name / "metrics.csv").read_text())))
        for name in metrics
    }
    for folder_row, shards_row in zip(rows["folder"], rows["shards"], strict=True):
        assert abs(float(folder_row["train_loss"]) - float(shards_row["train_loss"])) < 1e-5
        assert abs(float(folder_row["val_mAP"]) - float(shards_row["val_mAP"])) < 0.5
    assert metrics["folder"]["n_images"] == metrics["shards"]["n_images"] == SIZES["test"]
    assert abs(metrics["folder"]["mAP"] - metrics["shards"]["mAP"]) < 0.5
    told = [m["settings"]["partial"]["0.5"]["mAP"] for m in metrics.values()]
    assert abs(told[0] - told[1]) < 0.5


def test_a_truncated_shard_is_reported_with_its_name(packed: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(packed, data)
    shard = data / "test-000001.tar"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 3])
    dataset = build_dataset("shards", data, "test", image_size=48, scale_size=None)
    with pytest.raises(CTranError, match=r"shard .*test-000001\.tar is truncated or corrupt after \d+ of 24"):
        list(eval_loader(dataset, 8))
    manifest = json.loads((data / "val.json").read_text())
    manifest["shard_samples"][0] += 1  # a shard cut exactly between two samples reads as shorter
    (data / "val.json").write_text(json.dumps(manifest))
    dataset = build_dataset("shards", data, "val", image_size=48, scale_size=None)
    with pytest.raises(
        CTranError, match=r"shard .*val-000000\.tar holds 24 samples but its manifest says 25"
    ):
        list(eval_loader(dataset, 8))


def test_a_training_run_on_a_truncated_shard_stops_naming_it(packed: Path, tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    shutil.copytree(packed, data)
    shard = data / "train-000002.tar"
    shard.write_bytes(shard.read_bytes()[:5000])
    args = ["train", "--config", "digits-tiny", "--quiet", "--data", "shards", "--data-root", str(data)]
    args += ["--out", str(tmp_path / "run"), "data.image_size=48", "data.scale_size=null", "train.epochs=1"]
    assert main([*args, "model.dim=32", "data.num_workers=0"]) == 2
    assert "train-000002.tar is truncated or corrupt" in capsys.readouterr().err


def _bad_folder(root: Path) -> Path:
    """Eight readable PNGs and one that is not an image, in the CSV layout."""
    root.mkdir()
    rows = ["image,labels"]
    for i in range(8):
        Image.new("RGB", (12, 12), (30 * i, 0, 0)).save(root / f"ok{i}.png")
        rows.append(f"ok{i}.png,{'a' if i % 2 else 'b'}")
    (root / "broken.png").write_text("not an image")
    rows.append("broken.png,a")
    for split in ("train", "test"):
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return root


def test_unreadable_images_in_shards_follow_on_bad_image(tmp_path: Path) -> None:
    folder = _bad_folder(tmp_path / "data")
    out = tmp_path / "shards"
    assert main(["data", "pack", "--format", "csv", "--root", str(folder), "--out", str(out), "--quiet",
                 "--split", "train", "--shard-size", "3"]) == 0  # fmt: skip
    skip = build_dataset("shards", out, "train", train=True, image_size=12, scale_size=None)
    loader = train_loader(skip, 3, seed=0, ctx=DistContext(), workers=0)
    set_epoch(loader, 1)
    with pytest.warns(UserWarning, match=r"broken\.png \(in .*train-000002\.tar\)"):
        batches = list(loader)
    assert [len(batch.index) for batch in batches] == [3, 3, 3]  # the skipped image replaced by another
    assert 8 not in {i for batch in batches for i in batch.index.tolist()}
    assert [Path(path.split(" ")[0]).name for path, _ in skip.bad_images] == ["broken.png"]
    fail = build_dataset("shards", out, "train", image_size=12, scale_size=None, on_bad_image="fail")
    with pytest.raises(CTranError, match=r"cannot read image .*broken\.png"):
        list(eval_loader(fail, 3))


def test_shards_split_over_processes_and_workers_with_equal_epochs(packed: Path) -> None:
    """Each (process, worker) reads its own shards; uneven shards still give every process the same number
    of full batches; evaluation reads every sample once over all processes."""
    dataset = build_dataset("shards", packed, "train", train=True, image_size=48, scale_size=None)
    dataset.shards = dataset.shards[:3] + [dataset.shards[3].__class__(dataset.shards[3].url, 24)]
    streams = [ShardStream(dataset, 5, 7, rank, 2, 2, train=True) for rank in range(2)]
    read = [shard.url for stream in streams for worker in range(2) for shard in stream.shards_of(worker, 3)]
    assert sorted(read) == sorted(shard.url for shard in dataset.shards)  # disjoint and complete
    assert len(streams[0]) == len(streams[1]) == 10  # ceil(96 / (2 x 5))
    batches = [list(ShardStream(dataset, 5, 7, rank, 2, 1, train=True)) for rank in range(2)]
    assert [len(b) for b in batches] == [10, 10] and {len(x.index) for b in batches for x in b} == {5}
    test = build_dataset("shards", packed, "test", image_size=48, scale_size=None)
    seen = [
        i for rank in range(2) for b in ShardStream(test, 7, 0, rank, 2, 1, False) for i in b.index.tolist()
    ]
    assert sorted(seen) == list(range(SIZES["test"]))


def test_the_epochs_differ_and_repeat_with_the_seed(packed: Path) -> None:
    dataset = build_dataset("shards", packed, "train", train=True, image_size=48, scale_size=None)

    def epoch(number: int, seed: int = 0) -> list[list[int]]:
        stream = ShardStream(dataset, 8, seed, 0, 1, 1, train=True)
        stream.set_epoch(number)
        return [batch.index.tolist() for batch in stream]

    first = epoch(1)
    assert sorted(i for batch in first for i in batch) == list(
        range(SIZES["train"])
    )  # one epoch: every sample once
    assert epoch(1) == first and epoch(2) != first and epoch(1, seed=1) != first
    images = [batch.image for batch in ShardStream(dataset, 96, 0, 0, 1, 1, train=True)]
    again = [batch.image for batch in ShardStream(dataset, 96, 0, 0, 1, 1, train=True)]
    torch.testing.assert_close(images, again)  # augmentations seeded by (seed, epoch, index)


def test_a_stopped_pack_goes_on_from_its_last_complete_shard(
    digits: Path, packed: Path, tmp_path, monkeypatch
):
    from ctran.data.images import ImageFileDataset

    out = tmp_path / "resumed"
    real = ImageFileDataset.encoded_image

    def stop_at_50(self, index: int):
        if index == 50:
            raise KeyboardInterrupt
        return real(self, index)

    monkeypatch.setattr(ImageFileDataset, "encoded_image", stop_at_50)
    args = ["data", "pack", "--format", "csv", "--root", str(digits), "--out", str(out), "--quiet"]
    args += ["--shard-size", "24", "--split", "train"]
    assert main(args) == 130  # interrupted (Ctrl-C) while writing the third shard
    kept = [".train.pack.json", "train-000000.tar", "train-000001.tar", "vocabulary.json"]
    assert sorted(p.name for p in out.iterdir()) == kept
    monkeypatch.setattr(ImageFileDataset, "encoded_image", real)
    calls = []
    monkeypatch.setattr(ImageFileDataset, "encoded_image", lambda self, i: calls.append(i) or real(self, i))
    assert main(args) == 0
    assert min(calls) == 48  # the two complete shards were kept
    for number in range(4):
        name = f"train-{number:06d}.tar"
        assert (out / name).read_bytes() == (packed / name).read_bytes()
    assert not list(out.glob(".*"))


GLOO_SCRIPT = """
import json, sys
from ctran.data import openimages
from ctran.data.registry import build_dataset
from ctran.training.distributed import init_distributed, main_first, shutdown_distributed
from ctran.training.loaders import eval_loader, set_epoch, train_loader

ctx = init_distributed("cpu")
with main_first(ctx):
    label_table = openimages.load(sys.argv[3], "validation").notes[1]
train = build_dataset("shards", sys.argv[1], "train", train=True, image_size=16, scale_size=None)
loader = train_loader(train, 4, seed=0, ctx=ctx, workers=2)
seen = {"workers": loader.num_workers, "label_table": label_table}
for epoch in (1, 2):
    set_epoch(loader, epoch)
    seen[epoch] = [batch.index.tolist() for batch in loader]
test = build_dataset("shards", sys.argv[1], "test", image_size=16, scale_size=None)
seen["eval"] = [i for batch in eval_loader(test, 5, ctx, workers=2) for i in batch.index.tolist()]
with open(f"{sys.argv[2]}/rank{ctx.rank}.json", "w") as file:
    json.dump(seen, file)
shutdown_distributed()
"""


def test_two_gloo_processes_read_disjoint_samples_that_cover_the_epoch(tmp_path: Path) -> None:
    """Training and evaluation streams of two processes (each with a loader worker); and rank 0 builds
    the Open Images label table's cache before rank 1 reads it (``main_first``)."""
    folder = write_digit_folder(tmp_path / "data", {"train": 48, "val": 8, "test": 10})
    out = tmp_path / "shards"
    pack(folder, out, "--shard-size", "6")
    script = tmp_path / "read.py"
    script.write_text(textwrap.dedent(GLOO_SCRIPT))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29541"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    labels = make_openimages(tmp_path / "openimages")
    result = subprocess.run(
        [*command, str(script), str(out), str(tmp_path), str(labels)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["workers"] >= 1  # read in loader worker processes
    for epoch in ("1", "2"):
        steps = [ranks[r][epoch] for r in range(2)]
        assert len(steps[0]) == len(steps[1]) == 6  # 48 / (2 processes x 4): the ranks stay in step
        first, second = ({i for batch in steps[r] for i in batch} for r in range(2))
        assert not first & second and first | second == set(range(48))  # disjoint, the whole epoch
    assert ranks[0]["1"] != ranks[0]["2"]  # another order every epoch
    assert sorted(ranks[0]["eval"] + ranks[1]["eval"]) == list(range(10))
    assert "cached in" in ranks[0]["label_table"]  # rank 0 read the CSV and cached its table first,
    assert "loaded from the cache" in ranks[1]["label_table"]  # then rank 1 loaded it


def test_data_check_sends_shards_back_to_their_source(packed: Path, capsys) -> None:
    assert main(["data", "check", "--format", "shards", "--root", str(packed)]) == 2
    assert "run it on the source before packing" in capsys.readouterr().err


def test_shards_close_at_their_size_in_bytes(digits: Path, tmp_path: Path) -> None:
    """Each shard takes samples while they fit in ``shard_bytes`` (image and record), the next one did not."""
    from ctran.data.pack import pack_split

    limit = 2500
    dataset = build_dataset("csv", digits, "test")
    manifest = pack_split(dataset, tmp_path, "test", {"format": "csv"}, shard_size=1000, shard_bytes=limit)
    sizes = []  # bytes of each shard's samples, in order
    for number in range(len(manifest["shard_samples"])):
        members = _members(tmp_path / f"test-{number:06d}.tar")
        keys = sorted({name.split(".")[0] for name in members})
        sizes.append([sum(len(v) for k, v in members.items() if k.startswith(key)) for key in keys])
    assert [len(shard) for shard in sizes] == manifest["shard_samples"] and sum(map(len, sizes)) == SIZES[
        "test"
    ]
    assert len(sizes) > 1 and all(sum(shard) <= limit for shard in sizes)
    assert all(sum(shard) + following[0] > limit for shard, following in itertools.pairwise(sizes))
