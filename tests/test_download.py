"""``ctl-data download`` against a real HTTP server on loopback that fails in every way a CDN does.

The server serves generated JPEGs by signature and, for chosen signatures, a script of faults, one per
attempt (the last one repeats): 404, 500 then success, 429 with Retry-After, a response slower than
the client's timeout, a truncated body, a wrong Content-Length, an HTML page with status 200, a
connection reset. It logs every request it receives, so the rate limit is checked from the server's
clock, and an audit hook records every socket the test process opens, so that nothing can go
anywhere but the server.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, default_sigint, run_script, shared_file
from PIL import Image

from ctl_lightning.cli.data import main
from ctl_lightning.data.download import FetchSettings, download, retry_after_seconds
from ctl_lightning.data.formats import read_ctl_raw
from ctl_lightning.data.image_urls import ImageTarget, ctl_targets, stl_targets

RETRY_AFTER = 1  # seconds; the smallest whole value the header can carry
SLOW = 1.5  # seconds a "slow" response waits, past the client's timeout below
FAST = ["--rate", "0", "--timeout", "0.5", "--retries", "3", "--backoff", "0.01", "--concurrency", "8"]
HTML = b"<!DOCTYPE html><html><body>Too many requests, try again later</body></html>"


def jpeg(seed: int, size: int = 48) -> bytes:
    """A small JPEG of noise drawn from ``seed``: every image's bytes differ, and most of them are pixels."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=90)
    return out.getvalue()


def signature(name: str) -> str:
    return hashlib.md5(name.encode()).hexdigest()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a CDN does
    disable_nagle_algorithm = True  # headers and body leave at once, not 40 ms apart

    def log_message(self, *args) -> None:  # the test reads the server's log, not stderr
        pass

    def do_GET(self) -> None:
        server: LoopbackServer = self.server  # type: ignore[assignment]
        name = self.path.rsplit("/", 1)[-1].removesuffix(".jpg")
        fault = server.next_fault(name, self.path)
        body = server.images.get(name)
        if body is None or fault in ("404", "410", "403", "500"):
            self.reply(404 if body is None else int(fault), b"")
        elif fault == "429":
            self.reply(429, b"", {"Retry-After": str(RETRY_AFTER)})
        elif fault == "html":
            self.reply(200, HTML, {"Content-Type": "text/html; charset=utf-8"})
        elif fault == "truncated":  # the right Content-Length, half the body, then the connection closes
            self.reply(200, body[: len(body) // 2], {"Content-Length": str(len(body))}, close=True)
        elif fault == "short-length":  # a Content-Length 200 bytes short: the body looks complete but is cut
            self.reply(200, body, {"Content-Length": str(len(body) - 200)}, close=True)
        elif fault == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
        else:
            if fault == "slow":
                time.sleep(SLOW)
            self.reply(200, body, {"Content-Type": "image/jpeg"})

    def reply(self, status: int, body: bytes, headers: dict | None = None, close: bool = False) -> None:
        headers = {"Content-Length": str(len(body)), **(headers or {})}
        try:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up on a slow response
            self.close_connection = True


class LoopbackServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default 5 drops connections opened at once: timeouts no request caused

    def __init__(self, images: dict[str, bytes], faults: dict[str, list[str]] | None = None):
        super().__init__(("127.0.0.1", 0), Handler)
        self.images = images
        self.faults = faults or {}
        self.log: list[tuple[float, str, str]] = []  # (arrival, path, fault) of every request
        self.attempts: Counter = Counter()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/400x"

    def next_fault(self, name: str, path: str) -> str:
        with self.lock:
            script = self.faults.get(name, ["ok"])
            fault = script[min(self.attempts[name], len(script) - 1)]
            self.attempts[name] += 1
            self.log.append((time.monotonic(), path, fault))
        return fault

    def handle_error(self, request, client_address) -> None:  # resets on purpose; nothing to print
        pass


@pytest.fixture
def serve():
    """Start loopback servers on ephemeral ports; each stops at teardown."""
    servers: list[LoopbackServer] = []

    def start(images: dict[str, bytes], faults: dict[str, list[str]] | None = None) -> LoopbackServer:
        server = LoopbackServer(images, faults)
        server.thread.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()
        server.thread.join(timeout=5)


_CONNECTIONS: list[object] | None = None


def _audit(event: str, args: tuple) -> None:
    if _CONNECTIONS is not None and event in ("socket.connect", "socket.getaddrinfo"):
        _CONNECTIONS.append(args[1] if event == "socket.connect" else args[:2])


sys.addaudithook(_audit)  # hooks cannot be removed; this one records only while a test asks it to


@pytest.fixture
def connections(monkeypatch):
    """Every address this process connects to (or looks up) during the test; no proxy from the environment."""
    global _CONNECTIONS
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    _CONNECTIONS = []
    yield _CONNECTIONS
    _CONNECTIONS = None


def only_to(server: LoopbackServer, seen: list) -> None:
    host, port = server.server_address[:2]
    assert seen, "no connection recorded: the audit hook is not working"
    assert all(tuple(address[:2]) == (host, port) for address in seen), set(map(str, seen))


def ctl_folder(root: Path, names: list[str]) -> tuple[Path, dict[str, bytes]]:
    """A CTL folder whose raw_train.tsv names one outfit per name (two products each), and its images."""
    folder = root / "ctl"
    folder.mkdir(parents=True)
    rows = ["image_signature bounding_x  bounding_y  bounding_width  bounding_height label"]
    for name in names:
        rows += [f"{signature(name)}\t0.1\t0.1\t0.4\t0.4\tShoes", f"{signature(name)}\t0.5\t0.5\t0.4\t0.4\tPants"]
    (folder / "raw_train.tsv").write_text("\n".join(rows) + "\n")
    return folder, {signature(name): jpeg(i) for i, name in enumerate(names)}


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp-" in p.name]


# What each faulty signature gets, attempt by attempt (the last repeats), and how it must end.
RECOVERABLE = {
    "500-then-ok": ["500", "ok"],
    "429-then-ok": ["429", "ok"],
    "slow-then-ok": ["slow", "ok"],
    "truncated-then-ok": ["truncated", "ok"],
    "short-length-then-ok": ["short-length", "ok"],
    "html-then-ok": ["html", "ok"],
    "reset-then-ok": ["reset", "ok"],
}
UNRECOVERABLE = {
    "gone-404": (["404"], "missing"),
    "gone-410": (["410"], "missing"),
    "forbidden": (["403"], "HTTP 403"),
    "always-500": (["500"], "HTTP 500"),
    "always-html": (["html"], "HTML page"),
    "always-truncated": (["truncated"], "truncated body"),
    "always-short": (["short-length"], "not an image"),
    "always-reset": (["reset"], "connection error"),
    "always-slow": (["slow"], "timeout"),
}


def fault_matrix(root: Path) -> tuple[list[str], Path, dict[str, bytes], dict[str, bytes], dict[str, list[str]]]:
    """The matrix below as a CTL folder: its names, the folder, every image, the images the server
    holds (all but the 404's) and each faulty signature's script (experiments/download_faults.py too)."""
    names = [f"clean-{i}" for i in range(6)] + list(RECOVERABLE) + list(UNRECOVERABLE)
    folder, images = ctl_folder(root, names)
    faults = {signature(n): script for n, script in RECOVERABLE.items()}
    faults |= {signature(n): script for n, (script, _) in UNRECOVERABLE.items()}
    return names, folder, images, {s: b for s, b in images.items() if s != signature("gone-404")}, faults


def test_every_recoverable_image_arrives_and_every_other_is_reported(serve, connections, tmp_path, capsys):
    names, folder, images, served, faults = fault_matrix(tmp_path)
    server = serve(served, faults)
    main(["download", str(folder), "--base-url", server.url, *FAST])

    arrived = {p.stem: p.read_bytes() for p in (folder / "images").iterdir()}
    good = [signature(n) for n in names if n.startswith("clean") or n in RECOVERABLE]
    assert arrived == {s: images[s] for s in good}, "every recoverable image, byte for byte, and nothing else"
    report = json.loads((folder / "download_report.json").read_text())
    assert set(report["missing"]) == {f"{signature(n)}.jpg" for n in ("gone-404", "gone-410")}
    failed = {name: entry["reason"] for name, entry in report["failed"].items()}
    assert failed == {f"{signature(n)}.jpg": reason for n, (_, reason) in UNRECOVERABLE.items() if reason != "missing"}
    assert list(report["failed"]) == sorted(failed) and list(report["missing"]) == sorted(report["missing"])
    assert list(report["failed_by_reason"]) == sorted(set(failed.values())), "the same failures, the same report"
    assert all(entry["error"] and entry["url"].startswith(server.url) for entry in report["failed"].values())
    assert "Connection reset by peer" in report["failed"][f"{signature('always-reset')}.jpg"]["error"]
    assert (report["fetched"], report["present"]) == (len(good), 0)
    assert not leftovers(folder)

    attempts = {n: server.attempts[signature(n)] for n in names}
    assert attempts["gone-404"] == attempts["gone-410"] == attempts["forbidden"] == 1, "no retry on 404, 410, 403"
    assert all(attempts[n] == 2 for n in RECOVERABLE)
    assert attempts["always-500"] == attempts["always-reset"] == 4, "the first attempt and 3 retries"
    assert report["requests"] == len(server.log) == sum(attempts.values())
    times = [t for t, path, _ in server.log if signature("429-then-ok") in path]
    assert times[1] - times[0] >= RETRY_AFTER, "Retry-After is honoured"
    only_to(server, connections)

    out = capsys.readouterr().out
    for row in ("fetched", "already present", "missing (404/410)", "failed after retries: timeout", "bytes", "rate"):
        assert row in out
    assert "9 images did not arrive" in out


def test_rerun_fetches_only_what_failed(serve, connections, tmp_path, capsys):
    folder, images = ctl_folder(tmp_path, [f"image-{i}" for i in range(8)])
    broken = signature("image-3")
    server = serve(images, {broken: ["500"]})
    main(["download", str(folder), "--base-url", server.url, *FAST])
    assert broken + ".jpg" in json.loads((folder / "download_report.json").read_text())["failed"]
    server.faults.clear()
    before = len(server.log)
    main(["download", str(folder), "--base-url", server.url, *FAST])
    report = json.loads((folder / "download_report.json").read_text())
    assert (report["fetched"], report["present"], report["failed"]) == (1, 7, {})
    assert [path for _, path, _ in server.log[before:]] == [f"/400x/{broken[:2]}/{broken[2:4]}/{broken[4:6]}/{broken}.jpg"]
    assert {p.stem for p in (folder / "images").iterdir()} == set(images)
    only_to(server, connections)


def test_rate_limit_is_respected_on_the_server_clock(serve, connections, tmp_path):
    rate, n = 20.0, 30
    folder, images = ctl_folder(tmp_path, [f"image-{i}" for i in range(n)])
    server = serve(images, {signature("image-5"): ["500", "ok"]})  # retries count against the rate too
    main(["download", str(folder), "--base-url", server.url, *FAST, "--rate", str(rate)])
    arrivals = sorted(t for t, _, _ in server.log)
    assert len(arrivals) == n + 1
    window = 0.5
    busiest = max(sum(1 for t in arrivals if start <= t < start + window) for start in arrivals)
    assert busiest <= window * rate + 2, f"{busiest} requests within {window} s at --rate {rate}"
    assert arrivals[-1] - arrivals[0] >= 0.9 * n / rate
    only_to(server, connections)


def test_retry_after_holds_every_request(serve, connections, tmp_path):
    folder, images = ctl_folder(tmp_path, ["throttled"] + [f"image-{i}" for i in range(6)])
    server = serve(images, {signature("throttled"): ["429", "ok"]})
    main(["download", str(folder), "--base-url", server.url, *FAST, "--concurrency", "2", "--rate", "10"])
    throttled_at = next(t for t, _, fault in server.log if fault == "429")
    held = [t - throttled_at for t, _, _ in server.log if 0.1 < t - throttled_at < RETRY_AFTER - 0.05]
    assert not held, f"requests {held} s after a Retry-After of {RETRY_AFTER} s"
    assert len(list((folder / "images").iterdir())) == 7


def test_verify_fetches_again_what_no_longer_decodes(serve, connections, tmp_path):
    folder, images = ctl_folder(tmp_path, [f"image-{i}" for i in range(4)])
    cut, garbage = sorted(images)[:2]
    (folder / "images").mkdir()
    (folder / "images" / f"{cut}.jpg").write_bytes(images[cut][:-1000])  # its header still reads
    (folder / "images" / f"{garbage}.jpg").write_bytes(b"not an image")
    server = serve(images)
    main(["download", str(folder), "--base-url", server.url, *FAST])
    report = json.loads((folder / "download_report.json").read_text())
    assert (report["present"], report["refetched"], report["fetched"]) == (1, 1, 3)
    main(["download", str(folder), "--base-url", server.url, *FAST, "--verify"])
    report = json.loads((folder / "download_report.json").read_text())
    assert (report["present"], report["refetched"], report["fetched"]) == (3, 1, 1)
    assert {p.stem: p.read_bytes() for p in (folder / "images").iterdir()} == images


def test_a_run_killed_part_way_resumes_to_the_same_files(serve, tmp_path):
    folder, images = ctl_folder(tmp_path, [f"image-{i}" for i in range(40)])
    server = serve({s: jpeg(i, size=320) for i, s in enumerate(images)}, {s: ["slow"] if i % 2 else ["ok"] for i, s in enumerate(images)})
    expected = dict(server.images)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    command = [
        sys.executable,
        "-m",
        "ctl_lightning.cli.data",
        "download",
        str(folder),
        "--base-url",
        server.url,
        "--rate",
        "0",
        "--concurrency",
        "4",
        "--timeout",
        "5",
    ]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list((folder / "images").glob("*.jpg"))) < 5:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    kept = {p.stem: p.read_bytes() for p in (folder / "images").glob("*.jpg")}
    assert 5 <= len(kept) < len(expected), "killed part-way"
    assert all(kept[s] == expected[s] for s in kept), "a file under its final name is always whole"
    (folder / "images" / f".{signature('x')}.jpg.tmp-{process.pid}-1").write_bytes(b"half a write")

    server.faults.clear()
    main(["download", str(folder), "--base-url", server.url, *FAST])
    assert {p.stem: p.read_bytes() for p in (folder / "images").iterdir()} == expected
    assert not leftovers(folder)
    assert json.loads((folder / "download_report.json").read_text())["present"] == len(kept)


def test_an_interrupted_run_says_so_in_one_line(serve, tmp_path):
    folder, images = ctl_folder(tmp_path, [f"image-{i}" for i in range(8)])
    server = serve(images, {s: ["slow"] for s in images})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "ctl_lightning.cli.data", "download", str(folder), "--base-url", server.url, "--timeout", "5"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not server.log:
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    err = process.communicate(timeout=30)[1].strip().splitlines()
    assert process.returncode == 2 and len(err) == 1 and err[0].startswith("ctl-data: error: interrupted;"), err


def test_stl_scenes_and_products_go_where_the_store_reads_them(serve, connections, tmp_path):
    folder = tmp_path / "stl"
    folder.mkdir()
    pairs = [("p1", "s1"), ("p2", "s1"), ("p1", "s2")]
    (folder / "fashion.json").write_text(
        "".join(json.dumps({"product": signature(p), "scene": signature(s), "bbox": [0.1, 0.1, 0.5, 0.5]}) + "\n" for p, s in pairs)
    )
    server = serve({signature(n): jpeg(i) for i, n in enumerate(["p1", "p2", "s1", "s2"])})
    main(["download", str(folder), "--base-url", server.url, *FAST])
    assert {p.stem for p in (folder / "products").iterdir()} == {signature("p1"), signature("p2")}
    assert {p.stem for p in (folder / "scenes").iterdir()} == {signature("s1"), signature("s2")}
    assert len(server.log) == 4
    assert [t.path.parent.name for t in stl_targets(folder)] == ["products", "products", "scenes", "scenes"]


def test_from_urls_fetches_a_plain_list(serve, connections, tmp_path):
    images = {f"photo{i}": jpeg(i) for i in range(3)}
    server = serve(images, {"photo1": ["reset", "ok"]})
    port = server.server_address[1]
    listing = tmp_path / "urls.txt"
    listing.write_text("# my images\n" + "".join(f"http://127.0.0.1:{port}/any/path/{n}.jpg\n" for n in images) + "\n")
    main(["download", str(tmp_path / "out"), "--from-urls", str(listing), *FAST, "--limit", "2"])
    assert {p.name: p.read_bytes() for p in (tmp_path / "out" / "images").iterdir()} == {
        "photo0.jpg": images["photo0"],
        "photo1.jpg": images["photo1"],
    }
    only_to(server, connections)


@pytest.mark.parametrize(
    "setup, argv, message",
    [
        (lambda d: None, [], "neither raw_train.tsv/raw_test.tsv (CTL) nor fashion.json (STL) found"),
        (
            lambda d: (d / "raw_test.tsv").write_text("sig\t0.1\t0.1\t0.5\t0.5\tShoes\n"),
            ["--base-url", "ftp://mirror"],
            "--base-url must be an http:// or https:// URL",
        ),
        (
            lambda d: (d / "urls.txt").write_text("http://a/x/1.jpg\nhttp://b/y/1.jpg\n"),
            ["--from-urls", "URLS"],
            "urls.txt:2: http://b/y/1.jpg would overwrite http://a/x/1.jpg (line 1): both are named 1.jpg",
        ),
        (lambda d: (d / "urls.txt").write_text("not a url\n"), ["--from-urls", "URLS"], "urls.txt:1: expected an http(s) URL"),
        (lambda d: (d / "urls.txt").write_text("# escape\nhttp://a/x/..\n"), ["--from-urls", "URLS"], "urls.txt:2: expected"),
        (
            lambda d: (d / "raw_test.tsv").write_text("../../escape\t0.1\t0.1\t0.5\t0.5\tShoes\n"),
            [],
            "signature '../../escape' is not a plain file name",
        ),
    ],
)
def test_bad_input_is_a_one_line_error(tmp_path, capsys, setup, argv, message):
    setup(tmp_path)
    argv = [str(tmp_path / "urls.txt") if a == "URLS" else a for a in argv]
    with pytest.raises(SystemExit) as exit_:
        main(["download", str(tmp_path), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and err[0].startswith("ctl-data: error:") and message in err[0], err


def test_numeric_options_are_checked(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["download", str(tmp_path), "--concurrency", "0"])
    assert exit_.value.code == 2 and "--concurrency: must be at least 1, got 0" in capsys.readouterr().err


def test_a_body_over_the_size_cap_is_refused(serve, connections, tmp_path):
    server = serve({"big": jpeg(1, size=200)})
    target = ImageTarget(f"http://127.0.0.1:{server.server_address[1]}/big.jpg", tmp_path / "big.jpg")
    report = download([target], FetchSettings(max_bytes=1000, rate=0), progress=False)
    assert report.failed["big.jpg"]["reason"] == "too large" and not target.path.exists()
    assert len(server.log) == 1


def test_retry_after_reads_seconds_and_dates():
    assert retry_after_seconds("120") == 120
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    in_a_minute = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 60))
    assert 55 < retry_after_seconds(in_a_minute) <= 60
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0


def test_real_ctl_annotations_name_one_collage_per_outfit(tmp_path):
    (tmp_path / "raw_test.tsv").symlink_to(shared_file("ctl", "raw_test.tsv"))
    targets = ctl_targets(tmp_path)
    assert len(targets) == 5028  # docs/DESIGN.md: 5,028 outfits
    assert targets[0].url == "http://i.pinimg.com/400x/00/01/5b/00015b9d0c08164ed3b5dbb4613bb143.jpg"
    assert targets[0].path == tmp_path / "images" / "00015b9d0c08164ed3b5dbb4613bb143.jpg"


SMALL_RUN = ["data.image_size=32", "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "recommendation_examples=2"]


def _cli(module: str, *argv: str) -> str:
    """Run ``ctl-data`` or ``ctl-recommend`` as a user would; its output."""
    command = [sys.executable, "-m", f"ctl_lightning.cli.{module}", *argv]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_real_data_end_to_end(serve, tmp_path):
    """README "Real data, end to end": CTL and STL folders holding annotations only, their images served on loopback."""
    synth, data = tmp_path / "synth", tmp_path / "data"
    main(["synth", "--out", str(synth), "--world", "toy", "--outfits", "150", "--scenes", "30", "--styles", "4"])
    served: dict[str, bytes] = {}
    layout = {
        "ctl": (("raw_train.tsv", "raw_test.tsv", "fitb_test.json"), ("images",)),
        "stl": (("fashion.json", "fashion-cat.json"), ("products", "scenes")),
    }
    for kind, (annotation_files, image_dirs) in layout.items():
        (data / kind).mkdir(parents=True)
        for name in annotation_files:
            shutil.copy(synth / kind / name, data / kind / name)
        for name in image_dirs:
            served |= {p.stem: p.read_bytes() for p in (synth / kind / name).iterdir()}
    shutil.rmtree(synth)  # the images now exist on the server only
    server = serve(served)
    small = ["--base-url", server.url, "--rate", "0"]

    # CTL: download, prepare, train, recommend.
    _cli("data", "download", str(data / "ctl"), *small)
    assert {p.stem for p in (data / "ctl" / "images").iterdir()} == {t.path.stem for t in ctl_targets(data / "ctl")}
    products = sum(len(read_ctl_raw(data / "ctl" / name).records) for name in ("raw_train.tsv", "raw_test.tsv"))
    assert f": {products} products, 32 px" in _cli("data", "prepare", str(data / "ctl"), "--size", "32")
    run = tmp_path / "train"
    result = run_script("train.py", "data=ctl", *SMALL_RUN, f"paths.data_dir={data}", f"paths.root_dir={run}", f"hydra.run.dir={run}/run")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "wrote" in _cli("recommend", "complementary", "--catalog", str(run / "run"), "--product", "0", "--out", str(tmp_path / "recs"))

    # STL: download, prepare, embed its products with the CTL model, recommend.
    _cli("data", "download", str(data / "stl"), *small)
    assert len(list((data / "stl" / "products").iterdir())) == len(json.loads((data / "stl" / "fashion-cat.json").read_text()))
    _cli("data", "prepare", str(data / "stl"), "--size", "32")
    evaluated = tmp_path / "eval"
    result = run_script(
        "eval.py",
        "data=stl",
        *SMALL_RUN,
        f"ckpt_path={run}/run/checkpoints/last.ckpt",
        f"paths.data_dir={data}",
        f"paths.root_dir={evaluated}",
        f"hydra.run.dir={evaluated}/run",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "wrote" in _cli(
        "recommend", "similar", "--catalog", str(evaluated / "run"), "--product", "0", "--out", str(tmp_path / "stl-recs")
    )
    assert len(server.log) == len(served), "each image fetched once"


def test_the_fault_matrix_experiment_reports_what_the_test_asserts():
    """experiments/download_faults.py runs this module's fault matrix: its report counts what the test
    above asserts, with no address of the loopback server left in it."""
    sys.path.insert(0, str(REPO / "experiments"))
    try:
        import download_faults
    finally:
        sys.path.remove(str(REPO / "experiments"))
    text, report = download_faults.run()
    assert (report["fetched"], len(report["missing"]), len(report["failed"])) == (6 + len(RECOVERABLE), 2, len(UNRECOVERABLE) - 2)
    assert "9 images did not arrive" in text and "127.0.0.1" not in json.dumps(report) + text
