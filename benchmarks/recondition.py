"""Re-using the image tokens: re-conditioning an image, and the partial-label evaluation sweep.

Re-conditioning: ``Predictor.condition`` reuses the tokens of ``Predictor.encode`` and runs only label tokens,
transformer and readout, which is what changing an image's known labels costs. It is timed on one image
(batch 1, an already-normalised tensor, interleaved) against a full ``Predictor.predict`` and against the
reference's forward pass (which has no cache), for the paper's model (ResNet-101 at 576 x 576, L = 80) and the
demo's (small CNN at 48 x 48, L = 20). The FLOPs of both halves bound the possible speed-up: at the paper's
setting the transformer over 404 tokens of width 2048 is over a third of the model's FLOPs, so skipping the
backbone cannot make re-conditioning more than about 2.7x faster than a full prediction.

Partial-label sweep: ``ctran.training.evaluation.collect_scores`` with the paper's four settings (regular,
25/50/75% known) encodes each batch once and decodes it four times. It is timed against four passes with one
setting each (as the official code evaluates: one run per ``--test_known``), of ours and of the reference,
reading the images every time: digit-scenes test images, and JPEG photos at the paper's setting through the
CSV reader (decoding and resizing included).

Ours is what ``ctran.load`` runs (``optimize_for_inference``, float32), the reference is float32 too. Each
row checks parity first: the re-conditioning rows compare logits on mixed unknown/negative/positive
states, the sweep rows compare every setting's probabilities with those of the reference's passes.
Weights are random (speed does not depend on them). Run: ``.venv/bin/python benchmarks/recondition.py``.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from common import (
    Budget,
    Variant,
    base_parser,
    budget_from,
    contract_row,
    forward,
    machine_info,
    make_model,
    markdown_table,
    prepared,
    run_with_peak,
    setup,
    time_interleaved,
    write_photo_dataset,
    write_report,
)
from ctran.data.registry import build_dataset
from ctran.inference import Predictor
from ctran.model import CTran
from ctran.training.evaluation import Setting, collect_scores, input_states
from ctran.training.loaders import eval_loader
from peak import count_flops, machine_peaks
from reference import PARITY_ATOL, ReferenceCTran, check_parity, reference_from

MODELS = {
    "paper": {"backbone": "resnet101", "image_size": 576, "labels": 80, "dim": 2048},
    "demo": {"backbone": "small_cnn", "image_size": 48, "labels": 20, "dim": 128},
}
SWEEP = [Setting(), Setting(known_fraction=0.25), Setting(known_fraction=0.5), Setting(known_fraction=0.75)]


def parse_args(argv: list[str] | None = None):
    p = base_parser(__doc__, "recondition")
    p.add_argument("--models", default="paper,demo", help=f"comma-separated, from {', '.join(MODELS)}")
    p.add_argument("--photos", type=int, default=2, help="JPEG photos in the paper-setting sweep (default 2)")
    p.add_argument("--scenes", type=int, default=512, help="digit scenes in the demo sweep (default 512)")
    return p.parse_args(argv)


def recondition_row(name: str, budget: Budget, peaks: dict[str, float], device: torch.device) -> dict:
    """Condition vs predict vs the reference on one image; FLOPs of encode and condition."""
    spec = MODELS[name]
    model = make_model(spec["labels"], spec["backbone"], spec["dim"]).to(device)
    ours = prepared(model, Variant())
    predictor = Predictor(ours, [f"label_{i}" for i in range(spec["labels"])], image_size=spec["image_size"])
    torch.manual_seed(1)
    image = torch.randn(1, 3, spec["image_size"], spec["image_size"], device=device)
    known = {"label_0": True, "label_1": False}
    states = predictor.states(known, None, 1).to(device)
    features = predictor.encode(image)
    calls = {
        "condition": lambda: predictor.condition(features, known=known),
        "predict": lambda: predictor.predict(image, known=known),
        "ref": forward(reference_from(model), image, states),
    }
    start = time.perf_counter()
    (_, condition_peak), (_, _), (ref_out, ref_peak) = (run_with_peak(c, device) for c in calls.values())
    ours_logits = forward(ours, image, states)()
    diff = check_parity(ours_logits, ref_out, f"re-conditioning {name}")
    times = time_interleaved(calls, budget.repeats(time.perf_counter() - start), device)
    flops = {
        "encode": count_flops(lambda: predictor.encode(image)),
        "condition": count_flops(calls["condition"]),
    }
    predict_s, condition_s = (statistics.median(times[k]) for k in ("predict", "condition"))
    return contract_row(
        f"recondition_{name}_b1",
        1,
        times["condition"],
        times["ref"],
        condition_peak,
        ref_peak,
        flops["condition"],
        peaks["fp32"],
        ref_is="reference forward (no cache)",
        ours_predict_per_s=round(1 / predict_s, 3),
        speedup_vs_ours_predict=round(predict_s / condition_s, 2),
        gflops_encode=round(flops["encode"] / 1e9, 3),
        flop_bound_speedup=round(sum(flops.values()) / flops["condition"], 2),
        max_abs_logit_diff_vs_ref=diff,
        numerics="fp32",
        states="2 known (positive, negative), the rest unknown",
    )


def reference_passes(
    ref: ReferenceCTran, loader: DataLoader, settings: list[Setting], seed: int = 0
) -> dict[Setting, torch.Tensor]:
    """The official way: one full pass over the data per setting, backbone included every time; the
    target probabilities (N, T) per setting."""
    device = next(ref.parameters()).device
    probs: dict[Setting, list[torch.Tensor]] = {s: [] for s in settings}
    with torch.inference_mode():
        for setting in settings:
            for images, targets, extras, indices in loader:
                states = input_states(setting, targets, extras, indices, seed)
                logits, _ = ref(images.to(device), states.to(device))
                probs[setting].append(logits[:, : targets.shape[1]].sigmoid().cpu())
    return {s: torch.cat(p) for s, p in probs.items()}


def sweep_parity(ours: dict, ref: dict[Setting, torch.Tensor]) -> float:
    """Max abs probability difference over every setting; raises unless within the float32 tolerance."""
    diff = max((ours[s][0] - ref[s]).abs().max().item() for s in SWEEP)
    if not diff <= PARITY_ATOL:
        raise RuntimeError(
            f"partial-label sweep: ours and the reference disagree (max abs prob diff {diff:.2e})"
        )
    return diff


def sweep_row(name: str, model: CTran, loader: DataLoader, budget: Budget, peaks: dict) -> dict:
    """The four-setting sweep (one encode per batch) vs four one-setting passes of ours and the reference."""
    device = next(model.parameters()).device
    ref = reference_from(model)
    ours = prepared(model, Variant())
    calls = {
        "sweep": lambda: collect_scores(ours, loader, SWEEP),
        "ours_four_passes": lambda: [collect_scores(ours, loader, [s]) for s in SWEEP],
        "ref": lambda: reference_passes(ref, loader, SWEEP),
    }
    images = len(loader.dataset)
    start = time.perf_counter()
    diff = sweep_parity(calls["sweep"](), calls["ref"]())
    round_s = 2 * (time.perf_counter() - start)  # plus ours' four passes, about the reference's cost
    times = time_interleaved(calls, budget.repeats(round_s), device)
    four, sweep = statistics.median(times["ours_four_passes"]), statistics.median(times["sweep"])
    return contract_row(
        f"partial_sweep_{name}",
        images,
        times["sweep"],
        times["ref"],
        flops_per_item=count_flops(calls["sweep"]) / images,
        peak_flops=peaks["fp32"],
        ref_is="reference, four full passes",
        settings=[s.name for s in SWEEP],
        ours_four_passes_per_s=round(images / four, 3),
        speedup_vs_ours_four_passes=round(four / sweep, 2),
        max_abs_prob_diff_vs_ref=diff,
        numerics="fp32",
        states="regular, then 25/50/75 % of the labels known (the paper's partial-label settings)",
    )


def sweep_rows(args, names: list[str], budget: Budget, peaks: dict, device: torch.device) -> list[dict]:
    """The sweep on digit-scenes test images (demo) and on JPEG photos through the CSV reader (paper)."""
    rows = []
    if "demo" in names:
        scenes = 128 if args.quick else args.scenes
        test = build_dataset("digits", None, "test", image_size=48, scale_size=None, size=scenes)
        model = make_model(len(test.label_names), "small_cnn", 128).to(device)
        rows.append(sweep_row("demo", model, eval_loader(test, 256), budget, peaks))
    if "paper" in names:
        with tempfile.TemporaryDirectory() as tmp:
            photos = 2 if args.quick else args.photos
            folder = write_photo_dataset(Path(tmp), photos, labels=80)
            test = build_dataset("csv", folder, "test", image_size=576, scale_size=640)
            model = make_model(80).to(device)
            rows.append(sweep_row("paper_576", model, eval_loader(test, photos), budget, peaks))
    return rows


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = setup(args)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise SystemExit(f"unknown models {unknown} (choose from {list(MODELS)})")
    peaks = machine_peaks(device, args.quick)
    budget = budget_from(args, 20.0)
    rows = [recondition_row(name, budget, peaks, device) for name in names]
    rows += sweep_rows(args, names, budget, peaks, device)
    print(markdown_table(rows))
    for row in rows:
        if "speedup_vs_ours_predict" in row:
            print(
                f"{row['name']}: condition {row['speedup_vs_ours_predict']:.2f}x faster than our predict "
                f"(FLOP bound {row['flop_bound_speedup']:.2f}x)"
            )
        else:
            print(f"{row['name']}: sweep {row['speedup_vs_ours_four_passes']:.2f}x faster than four passes")
    write_report(args.out, "recondition", machine_info(device), rows)
    return {"rows": rows}


if __name__ == "__main__":
    main()
