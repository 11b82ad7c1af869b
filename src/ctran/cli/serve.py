"""``ctran serve``: the interactive tagging page and JSON API for a checkpoint, on this machine by default."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ctran.cli.args import THRESHOLD_DEFAULT, positive
from ctran.errors import CTranError
from ctran.extras import require

if TYPE_CHECKING:
    from fastapi import FastAPI


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "serve",
        help="a web page (and JSON API) to tag images interactively: mark labels, watch the others update",
        description="Serve a tagging page and a JSON API for a C-Tran checkpoint. Upload an image, mark the "
        "labels you know as present or absent, and every other label is re-predicted knowing them (the image "
        "is encoded once; each change re-runs only the label side of the model, and with a one_way "
        "checkpoint only its label rows). 'Ask next' names the label whose answer should settle the most of "
        "the others' uncertainty. Binds to 127.0.0.1 unless --host says otherwise. API: POST /api/images, "
        "POST /api/images/{id}/condition, GET /api/images/{id}/suggest, "
        "GET /api/images/{id}/attention/{label}, GET /api/labels, GET /healthz; schema at /openapi.json.",
    )
    p.add_argument("--checkpoint", required=True, type=Path, help="a ctran checkpoint (.pt)")
    p.add_argument("--examples", type=Path, default=None, metavar="DIR", help="a folder of example images")
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help=f"probability at which a label counts as present ({THRESHOLD_DEFAULT})",
    )
    p.add_argument(
        "--max-upload-mb", type=float, default=20.0, help="largest accepted upload (default: 20 MB)"
    )
    p.add_argument(
        "--max-megapixels", type=float, default=50.0, help="largest accepted image (default: 50 megapixels)"
    )
    p.add_argument("--cache-size", type=int, default=32, help="images whose features are kept (default: 32)")
    add_suggest_options(p)
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    add_server_options(p)
    p.set_defaults(run=_run_serve)


def add_suggest_options(p: argparse.ArgumentParser) -> None:
    """How "Ask next" ranks the labels (``ctran serve`` and ``ctran annotate``)."""
    p.add_argument(
        "--suggest-candidates",
        type=int,
        default=16,
        metavar="N",
        help="'Ask next' scores the N most uncertain labels by expected information, re-predicting each "
        "with both answers (default: 16; 0: every unknown label)",
    )
    p.add_argument(
        "--suggest-method",
        default="information",
        choices=("information", "uncertainty"),
        help="how 'Ask next' ranks labels: information (default; 2N re-predictions per question) or "
        "uncertainty (the labels' own, no extra model call: asks fewer questions until every label is right "
        "on the digit scenes, and is the quick one at the paper's scale on a CPU)",
    )


def add_server_options(p: argparse.ArgumentParser) -> None:
    """Where the server listens and what it reports (``ctran serve`` and ``ctran annotate``)."""
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)"
    )
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 picks a free one)")
    p.add_argument(
        "--json", type=Path, default=None, help="write the address and settings here once listening"
    )
    p.add_argument(
        "--log-level",
        default="warning",
        choices=("critical", "error", "warning", "info", "debug"),
        help="server log level; debug also logs every request (default: warning)",
    )


def candidates(value: int) -> int | None:
    if value < 0:
        raise CTranError(f"--suggest-candidates must be 0 (all) or positive, got {value}")
    return value or None


def _run_serve(args: argparse.Namespace) -> int:
    require("serve", "ctran serve")
    from ctran.inference import load
    from ctran.serving import create_app
    from ctran.serving.security import LOOPBACK_HOSTS
    from ctran.serving.server import is_loopback

    check_port(args.port)
    if args.max_upload_mb <= 0 or args.max_megapixels <= 0:
        raise CTranError("--max-upload-mb and --max-megapixels must be positive")
    predictor = load(args.checkpoint, args.device)
    app = create_app(
        predictor,
        examples=args.examples,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_pixels=int(args.max_megapixels * 1e6),
        cache_size=positive(args.cache_size, "--cache-size"),
        threshold=args.threshold,
        allowed_hosts=LOOPBACK_HOSTS if is_loopback(args.host) else None,
        suggest_candidates=candidates(args.suggest_candidates),
        suggest_method=args.suggest_method,
    )
    info = {
        "checkpoint": str(args.checkpoint),
        "targets": len(predictor.target_names),
        "extras": len(predictor.extra_names),
        "examples": str(args.examples) if args.examples else None,
        "max_upload_bytes": int(args.max_upload_mb * 2**20),
        "cache_size": args.cache_size,
        "suggest_candidates": args.suggest_candidates,
        "suggest_method": args.suggest_method,
    }
    rows = {
        "checkpoint": args.checkpoint,
        "labels": f"{info['targets']} targets, {info['extras']} extra",
        "examples": info["examples"] or "-",
    }
    return listen(app, args, "serve", rows, info)


def check_port(port: int) -> None:
    if not 0 <= port <= 65535:
        raise CTranError(f"--port must be in 0..65535, got {port}")


def listen(app: FastAPI, args: argparse.Namespace, command: str, rows: dict, info: dict) -> int:
    """Bind ``--host``/``--port``, warn when other machines can reach it, print the settings table (and
    write ``--json``), then serve until Ctrl+C."""
    from ctran.report import write_json
    from ctran.serving.server import bind, is_loopback, serve, url_of

    sock = bind(args.host, args.port)
    url = url_of(sock)
    if not is_loopback(args.host):
        print(
            f"ctran {command}: warning: listening on {args.host}, reachable from other machines; the API has "
            "no authentication",
            file=sys.stderr,
        )
    info = {"url": url, "host": args.host, "port": sock.getsockname()[1], **info, "pid": os.getpid()}
    rows = {"page": url, "API schema": f"{url}openapi.json", **rows}
    table = "\n".join(["| setting | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows.items())])
    print(f"{table}\n\nctran {command}: listening on {url} (Ctrl+C stops)", flush=True)
    if args.json:
        write_json(args.json, info)
    try:
        serve(app, sock, args.log_level)
    except KeyboardInterrupt:  # uvicorn shuts down cleanly on Ctrl+C, then passes the signal on
        print(f"ctran {command}: stopped", flush=True)
    return 0
