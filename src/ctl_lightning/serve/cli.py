"""``ctl-serve``: a run's recommendations over HTTP.

    ctl-serve [RUN_DIR] [--host 127.0.0.1] [--port 8000]
    ctl-serve runs/current --watch      # follow a symlink: repoint it to promote another run

Serves the run's catalogs (see the README's "Serving" section; the API at http://HOST:PORT/docs).
Set CTL_SERVE_TOKEN in the environment to allow ``POST /admin/reload`` with that token.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ctl_lightning.allocator import keep_freed_memory
from ctl_lightning.errors import CtlError, friendly_errors
from ctl_lightning.retrieval.index_options import add_index_options, index_settings
from ctl_lightning.serve.state import ServeSettings

TOKEN_ENV = "CTL_SERVE_TOKEN"
DEFAULTS = ServeSettings()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ctl-serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "run_dir",
        metavar="RUN_DIR",
        nargs="?",
        help="a run directory written by train.py or eval.py (or its catalogs/ folder); default: the latest under outputs/",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    add_index_options(p)
    p.add_argument("--max-k", type=int, default=DEFAULTS.max_k, help="the largest k a query may ask for")
    p.add_argument("--max-upload-mb", type=float, default=DEFAULTS.max_upload_bytes / 2**20, help="the largest upload (413 above)")
    p.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size, help="image queries in one forward pass at most")
    p.add_argument(
        "--batch-wait-ms", type=float, default=DEFAULTS.batch_wait_ms, help="how long an image waits for others to share its pass"
    )
    p.add_argument("--data-root", help="where the run's dataset folder is now, if it moved since the run")
    p.add_argument(
        "--watch",
        action="store_true",
        help="RUN_DIR is a symlink (ln -sfn RUN current): serve its target, and load and swap in the new one when it is repointed",
    )
    p.add_argument("--watch-interval", type=float, default=2.0, help="seconds between looks at the --watch symlink (default 2)")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    return p


def latest():
    """The latest run with catalogs under outputs/ (training runs first), as ``make app`` serves."""
    from ctl_lightning.app.logic import latest_run, search_roots

    run = latest_run(search_roots())
    if run is None:
        raise CtlError("no run with catalogs found under outputs/train/runs or outputs/*/runs; run `make train` first, or name a RUN_DIR")
    return run


def main(argv: list[str] | None = None) -> None:
    keep_freed_memory()
    p = parser()
    args = p.parse_args(argv)
    if not 0 <= args.port <= 65535:
        p.error(f"--port must be between 0 and 65535, got {args.port}")
    for name in ("max_k", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.max_upload_mb <= 0 or args.batch_wait_ms < 0:
        p.error("--max-upload-mb must be positive and --batch-wait-ms not negative")
    if args.watch and (args.run_dir is None or args.watch_interval <= 0):
        p.error("--watch needs RUN_DIR, a symlink to the run to serve, and a positive --watch-interval")
    with friendly_errors("ctl-serve"):
        settings = ServeSettings(
            max_k=args.max_k,
            max_upload_bytes=int(args.max_upload_mb * 2**20),
            batch_size=args.batch_size,
            batch_wait_ms=args.batch_wait_ms,
            index=index_settings(args),
            data_root=args.data_root,
        )
        import uvicorn

        from ctl_lightning.serve.app import create_app

        watch = args.watch_interval if args.watch else None
        app = create_app(args.run_dir or latest(), settings, token=os.environ.get(TOKEN_ENV) or None, watch_interval=watch)
        served = app.state.holder.current
        if served.batcher is None:
            images = f"product queries only ({served.no_model})"
        else:
            images = f"image queries embedded by {served.embedder.kind}" + (f" ({served.no_onnx})" if served.no_onnx else "")
        print(f"ctl-serve: {served.run_dir}: {len(served.recommender)} products, {images}", file=sys.stderr)
        if summary := served.recommender.index_summary():
            print(f"ctl-serve: {summary}", file=sys.stderr)
        print(f"ctl-serve: API docs at http://{args.host}:{args.port}/docs", file=sys.stderr)
        if args.watch:
            print(f"ctl-serve: following {args.run_dir}: repoint it (ln -sfn RUN {args.run_dir}) to serve another run", file=sys.stderr)
            logging.basicConfig(format="%(message)s")
            logging.getLogger("ctl_lightning.serve").setLevel(logging.INFO)  # say when a repointed link is served
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
