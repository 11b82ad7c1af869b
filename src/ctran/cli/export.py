"""``ctran export``: a checkpoint as ONNX or TorchScript, checked against PyTorch after writing."""

from __future__ import annotations

import argparse
from pathlib import Path

from ctran.extras import require


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "export",
        help="export a checkpoint to ONNX or TorchScript (inputs: image, label_states; dynamic batch)",
        description="Write logits = f(image, label_states) as ONNX or TorchScript. image: (B, 3, S, S) "
        "float32, ImageNet-normalised; label_states: (B, L) int64 in {-1 unknown, 0 negative, 1 positive}, "
        "targets then extras; logits: (B, L). The batch size is dynamic. Label names, input size, "
        "normalisation and thresholds are stored in the file. After writing, the file is run on batches "
        "of 1 and 3 and compared with PyTorch.",
    )
    p.add_argument("--checkpoint", required=True, type=Path, help="a ctran checkpoint (.pt)")
    p.add_argument(
        "--format",
        default=None,
        choices=("onnx", "torchscript"),
        help="default: from the --out suffix (.onnx; .pt/.ts/.torchscript)",
    )
    p.add_argument("--out", required=True, type=Path, help="the file to write")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version (default: 17)")
    p.add_argument("--no-verify", action="store_true", help="skip the comparison with PyTorch")
    p.add_argument("--json", type=Path, default=None, help="write a JSON summary here")
    p.set_defaults(run=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from ctran.inference import load
    from ctran.inference.export import export, format_for, verify
    from ctran.report import write_json

    fmt = format_for(args.out, args.format)
    if fmt == "onnx":
        require("export", "ONNX export", ("onnx",))
    predictor = load(args.checkpoint)
    path = export(predictor, args.out, fmt, args.opset)
    summary = {
        "file": str(path),
        "format": fmt,
        "megabytes": round(path.stat().st_size / 2**20, 2),
        "inputs": {
            "image": ["batch", 3, predictor.image_size, predictor.image_size],
            "label_states": ["batch", len(predictor.label_names)],
        },
        "outputs": {"logits": ["batch", len(predictor.label_names)]},
        "labels": len(predictor.target_names),
        "extra_labels": len(predictor.extra_names),
    }
    if not args.no_verify:
        if fmt == "onnx":
            require("export", "checking the ONNX file (or pass --no-verify)", ("onnxruntime",))
        summary["max_abs_diff_vs_pytorch"] = verify(predictor, path, fmt)
    lines = ["| field | value |", "|---|---|"] + [f"| {key} | {value} |" for key, value in summary.items()]
    print("\n".join(lines))
    if args.json:
        write_json(args.json, summary)
    return 0
