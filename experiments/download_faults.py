"""Run `ctl-data download` through the fault matrix of its tests and write experiments/download_faults.{md,json}.

    .venv/bin/python experiments/download_faults.py

The server, the folder and the faults are those of
`tests/test_download.py::test_every_recoverable_image_arrives_and_every_other_is_reported` (imported
from there, so the two cannot drift apart): a real HTTP server on 127.0.0.1 serving generated JPEGs,
6 clean images, 7 that fail once then succeed and 9 that never arrive. What lands here is the table
the command prints and its report, so that a reader can see one run's outcome without running it.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import test_download as matrix  # noqa: E402  (the test module: its server and faults)

from ctl_lightning.cli.data import main as ctl_data  # noqa: E402


def run() -> tuple[str, dict]:
    """The table `ctl-data download` prints and its download_report.json, with the folder path removed."""
    with tempfile.TemporaryDirectory() as tmp:
        _, folder, _, served, faults = matrix.fault_matrix(Path(tmp))
        server = matrix.LoopbackServer(served, faults)
        server.thread.start()
        printed = io.StringIO()
        try:
            with contextlib.redirect_stdout(printed):
                ctl_data(["download", str(folder), "--base-url", server.url, *matrix.FAST])
        finally:
            server.shutdown()
            server.server_close()
        report = json.loads((folder / "download_report.json").read_text())
        text = printed.getvalue().replace(str(folder), "<folder>").replace(server.url, "<server>")
    for entry in [*report["missing"].values(), *report["failed"].values()]:
        entry["url"] = entry["url"].replace(server.url, "<server>")
    return text, report


def main() -> None:
    text, report = run()
    (HERE / "download_faults.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# `ctl-data download` through the fault matrix",
        "",
        "Written by `python experiments/download_faults.py`: one run of the fault matrix of",
        "`tests/test_download.py` (a real HTTP server on 127.0.0.1; options "
        f"`{' '.join(matrix.FAST)}`). The per-signature report is in `download_faults.json`.",
        "",
        "| signature's faults, attempt by attempt | expected end |",
        "|---|---|",
        *[f"| {', '.join(script)} | arrives |" for script in matrix.RECOVERABLE.values()],
        *[f"| {', '.join(script)} (every attempt) | {reason} |" for script, reason in matrix.UNRECOVERABLE.values()],
        "| (6 clean images) | arrives |",
        "",
        "What the command printed:",
        "",
        "```",
        text.rstrip(),
        "```",
        "",
    ]
    (HERE / "download_faults.md").write_text("\n".join(lines))
    print(f"wrote {HERE / 'download_faults.md'}")


if __name__ == "__main__":
    main()
