"""``ctran annotate``: annotate a library (a folder of images) with the model in the loop; every answer kept.

The command is ``ctran annotate [ACTION] DIR``: ``serve`` (the default, so ``ctran annotate DIR`` opens the
page), ``export`` (the answers as a training set, or into the sidecars) and ``retrain`` (fine-tune the
library's model on its answers). Each action's options have their own group in ``--help``; ``--db`` and
``--checkpoint`` apply to all.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ctran.cli.annotate_actions import (
    add_export_options,
    add_retrain_options,
    add_shared_options,
    run_export,
    run_retrain,
)
from ctran.cli.args import THRESHOLD_DEFAULT, positive
from ctran.cli.serve import add_server_options, add_suggest_options, candidates, check_port, listen
from ctran.errors import CTranError
from ctran.extras import require
from ctran.tagging.options import READS


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "annotate",
        help="annotate a folder of images with the model in the loop, keeping every answer",
        description="Open a library: the images under DIR (searched recursively), their existing tags (read "
        "as ctran tag reads them, imported once as answers) and every answer given since, kept in SQLite "
        "(DIR/.ctran/library.sqlite). 'serve' (the default action) serves a page, on this machine only "
        "unless --host says otherwise, to answer labels image by image: each image's predictions are "
        "conditioned on its answers, 'Ask next' picks the most useful question, the image list shows "
        "progress and filters, and 'next image' can go to the image the model is least sure about. Answers "
        "are stored as they are given: a crash loses at most the one in flight. Several people can annotate "
        "at once; the last answer on a label wins and the history keeps every one. 'export' writes the "
        "answers as a training set (or into the captions/XMP sidecars); 'retrain' fine-tunes the library's "
        "model on them and makes the result the model it opens with.",
        epilog="examples:\n  ctran annotate photos --checkpoint runs/demo/ctran.pt\n"
        "  ctran annotate retrain photos --epochs 3\n  ctran annotate export photos --out data/photos\n"
        "  ctran annotate export photos --sidecars txt",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "action",
        nargs="?",
        default="serve",
        choices=ACTIONS,
        metavar="ACTION",
        help="serve (default): the annotation page; export: the answers as a dataset; retrain: learn "
        "from them",
    )
    p.add_argument("library", type=Path, metavar="DIR", help="the library: a folder of images")
    p.add_argument(
        "--db", type=Path, default=None, help="the answer store (default: DIR/.ctran/library.sqlite)"
    )
    p.add_argument(
        "--checkpoint",
        type=Path,
        help="a ctran checkpoint (.pt); default: the library's current model (its last retrain's)",
    )
    serve = p.add_argument_group("serve")
    serve.add_argument(
        "--read",
        action="append",
        choices=READS,
        help="existing tags to import as answers at start: txt (IMAGE.txt captions, default), xmp (sidecars "
        "and embedded keywords), none (repeatable); an edited caption is imported again, a person's later "
        "answer wins",
    )
    serve.add_argument(
        "--threshold",
        type=float,
        default=None,
        help=f"probability at which a label counts ({THRESHOLD_DEFAULT})",
    )
    serve.add_argument(
        "--cache-size", type=int, default=256, help="images whose features are kept (default: 256)"
    )
    add_suggest_options(serve)
    serve.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    add_server_options(serve)
    both = p.add_argument_group("export and retrain")
    add_shared_options(both)
    add_export_options(p.add_argument_group("export"))
    add_retrain_options(p.add_argument_group("retrain"))
    p.set_defaults(run=_run, overrides=[])  # KEY=VALUE after DIR: config overrides of export / retrain


def _run(args: argparse.Namespace) -> int:
    return ACTIONS[args.action](args)


def _serve(args: argparse.Namespace) -> int:
    require("serve", "ctran annotate")
    from ctran.annotation.library import Library
    from ctran.inference import load
    from ctran.serving.library_app import create_library_app
    from ctran.serving.security import LOOPBACK_HOSTS
    from ctran.serving.server import is_loopback

    check_port(args.port)
    library = Library(args.library, args.db)
    try:
        checkpoint = args.checkpoint or library.store.current_checkpoint()
        if checkpoint is None:
            raise CTranError(
                "serving a library needs --checkpoint CK (the model that predicts its labels); after a "
                "retrain the library remembers its model"
            )
        predictor = load(checkpoint, args.device)
        app = create_library_app(  # registers the checkpoint's labels, which the imported tags are matched to
            library,
            predictor,
            cache_size=positive(args.cache_size, "--cache-size"),
            threshold=args.threshold,
            allowed_hosts=LOOPBACK_HOSTS if is_loopback(args.host) else None,
            suggest_method=args.suggest_method,
            suggest_candidates=candidates(args.suggest_candidates),
            checkpoint=str(checkpoint),
        )
        reads = tuple(dict.fromkeys(r for r in args.read or ["txt"] if r != "none"))
        imported, problems = library.import_tags(reads) if reads else (0, [])
        for problem in problems:
            print(f"ctran annotate: warning: {problem}", file=sys.stderr)
        if not library.images:
            print(f"ctran annotate: warning: no image files under {library.root}", file=sys.stderr)
        info = {
            "library": str(library.root),
            "db": str(library.store.path),
            "images": len(library.images),
            "imported": imported,
            "unreadable_tag_files": len(problems),
            "checkpoint": str(checkpoint),
            "targets": len(predictor.target_names),
            "extras": len(predictor.extra_names),
        }
        rows = {
            "library": f"{library.root} ({len(library.images)} images)",
            "answers": library.store.path,
            "imported": f"{imported} answers from existing tags"
            + (f", {len(problems)} files unreadable" if problems else ""),
            "checkpoint": checkpoint,
            "labels": f"{info['targets']} targets, {info['extras']} extra",
        }
        return listen(app, args, "annotate", rows, info)
    finally:
        library.close()


ACTIONS = {"serve": _serve, "export": run_export, "retrain": run_retrain}
