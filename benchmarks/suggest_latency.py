"""Latency of "Ask next" in ``ctran serve``: ``GET /api/images/{id}/suggest`` over real loopback HTTP.

For each model an app (``ctran.serving.create_app``) runs in a background uvicorn server; one image is
uploaded (encoded once), then each request kind is timed from send to parsed answer, interleaved:

- ``condition``: ``POST .../condition`` with two known labels, for scale;
- ``uncertainty``: ``suggest?method=uncertainty`` (one re-conditioning);
- ``information (N)``: ``suggest?candidates=N``: 2N re-conditionings in one batch (``ctran serve``'s default
  pool is 16; N = L scores every label).

Models: the demo checkpoint (``runs/demo/ctran.pt``: 16 targets, 4 extras, full attention) and a paper-size
C-Tran (ResNet-101 at 576 x 576, L = 80, random weights) under both attention patterns, fed a 640 x 480 JPEG.
FLOPs per call (``Predictor.suggest`` itself) come with every row. float32, ``--threads`` torch threads.

Writes ``benchmarks/results/suggest_latency.json`` and ``.md``. Run:
``PYTHONPATH=src .venv/bin/python benchmarks/suggest_latency.py --threads 1`` (see ``--help``).
"""

from __future__ import annotations

import io
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image

import ctran
from common import base_parser, machine_info, setup, write_photo_dataset, write_report
from ctran.data.digit_scenes import generate_split
from ctran.inference import Predictor
from ctran.serving import BackgroundServer, create_app
from one_way import pair
from peak import count_flops

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None):
    p = base_parser(__doc__, "suggest_latency")
    p.add_argument("--checkpoint", type=Path, default=ROOT / "runs/demo/ctran.pt", help="demo checkpoint")
    p.add_argument("--demo-repeats", type=int, default=20, help="timed requests of each kind, demo model")
    p.add_argument("--paper-repeats", type=int, default=3, help="timed requests of each kind, paper size")
    p.add_argument("--no-paper", action="store_true", help="only the demo checkpoint")
    return p.parse_args(argv)


def requests_for(predictor: Predictor) -> dict[str, tuple[str, dict]]:
    """Request kind -> (method, query or body) relative to the image's URL."""
    targets = predictor.target_names
    known = {targets[0]: True, targets[1]: False}
    spec = f"{targets[0]}=1,{targets[1]}=0"
    kinds = {
        "condition": ("POST", {"json": {"known": known}}),
        "uncertainty": ("GET", {"params": {"known": spec, "method": "uncertainty"}}),
        "information (16)": ("GET", {"params": {"known": spec, "candidates": 16}}),
    }
    if len(targets) > 16:
        kinds[f"information ({len(targets)})"] = (
            "GET",
            {"params": {"known": spec, "candidates": len(targets)}},
        )
    return kinds


def flops_of(predictor: Predictor, image: Image.Image, kind: str) -> float:
    """FLOPs of the model work behind one request kind (the predictor called directly)."""
    targets = predictor.target_names
    known = {targets[0]: True, targets[1]: False}
    features = predictor.encode(image)
    if kind == "condition":
        return count_flops(lambda: predictor.condition(features, known))
    if kind == "uncertainty":
        return count_flops(lambda: predictor.suggest(features, known, method="uncertainty"))
    pool = int(kind.split("(")[1].rstrip(")"))
    return count_flops(lambda: predictor.suggest(features, known, candidates=pool))


def measure(name: str, predictor: Predictor, image: Image.Image, repeats: int) -> list[dict]:
    """Median and spread of each request kind's latency for one model."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG" if image.size[0] > 100 else "PNG", quality=90)
    kinds = requests_for(predictor)
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    with (
        BackgroundServer(create_app(predictor)) as server,
        httpx.Client(base_url=server.url, timeout=None) as http,
    ):
        upload = http.post("/api/images", files={"file": ("image", buffer.getvalue())})
        upload.raise_for_status()
        base = f"/api/images/{upload.json()['id']}"
        paths = {"condition": f"{base}/condition"} | {k: f"{base}/suggest" for k in kinds if k != "condition"}
        for kind, (method, options) in kinds.items():  # warm-up, untimed
            http.request(method, paths[kind], **options).raise_for_status()
        for i in range(repeats):
            for kind in kinds if i % 2 == 0 else reversed(list(kinds)):
                method, options = kinds[kind]
                start = time.perf_counter()
                http.request(method, paths[kind], **options).raise_for_status()
                times[kind].append(time.perf_counter() - start)
    rows = []
    for kind, samples in times.items():
        rows.append(
            {
                "name": f"suggest_{name}_{kind.split()[0]}"
                + (f"_{kind.split('(')[1][:-1]}" if "(" in kind else ""),
                "model": name,
                "attention": predictor.model.attention,
                "request": kind,
                "median_ms": round(1000 * statistics.median(samples), 1),
                "min_ms": round(1000 * min(samples), 1),
                "max_ms": round(1000 * max(samples), 1),
                "repeats": len(samples),
                "gflops": round(flops_of(predictor, image, kind) / 1e9, 3),
            }
        )
        print(f"{name} {kind}: {rows[-1]['median_ms']} ms ({rows[-1]['gflops']} GFLOPs)", flush=True)
    return rows


def render(rows: list[dict]) -> str:
    lines = [
        "| model | attention | request | median (ms) | min-max (ms) | GFLOPs | repeats |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['attention']} | {r['request']} | {r['median_ms']:.1f} | "
            f"{r['min_ms']:.0f}-{r['max_ms']:.0f} | {r['gflops']:.2f} | {r['repeats']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = setup(args)
    started = machine_info(device)
    scene = Image.fromarray(generate_split("test", 0, 1).images[0])
    rows = measure("demo", ctran.load(args.checkpoint), scene, args.demo_repeats)
    if not args.no_paper:
        with tempfile.TemporaryDirectory() as folder:
            photo = Image.open(write_photo_dataset(Path(folder), 1, 80) / "photo_0000.jpg").convert("RGB")
        names = [f"label_{i}" for i in range(80)]
        for pattern, model in pair(80).items():
            predictor = Predictor(model, names, image_size=576, scale_size=640)
            rows += measure(f"r101_576_L80_{pattern}", predictor, photo, args.paper_repeats)
            del predictor, model
    table = render(rows)
    print(table)
    machine = {**machine_info(device), "load_average_1min_at_start": started["load_average_1min"]}
    write_report(args.out, "suggest_latency", machine, rows)
    args.out.with_suffix(".md").write_text(table)
    print(f"wrote {args.out.with_suffix('.md')}")
    return {"rows": rows}


if __name__ == "__main__":
    main()
