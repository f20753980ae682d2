"""Fetch many images over a network that drops, throttles and lies, keeping only whole images.

At the real datasets' scale (about 479,000 CTL and 38,000 STL products) thousands of requests fail, so
every failure mode is handled here rather than found later as missing crops:

* many requests in flight on one ``httpx.AsyncClient`` (reused connections), at most ``concurrency``;
* a pacer spaces request starts ``1/rate`` apart, retries included, so the server never sees more
  than ``rate`` per second; a ``Retry-After`` holds every request, since it is about this client;
* connection errors, timeouts, 5xx, 429 and bad bodies are retried with exponential backoff and
  jitter; 404 and 410 are final at once (the image is gone);
* a body is kept only when complete (h11 rejects a body shorter than its Content-Length; a cut is
  reported as such), decodable by Pillow and not an HTML page served with 200; it is then written
  atomically, so a file under its final name is always a whole image and a rerun can trust it.
"""

from __future__ import annotations

import asyncio
import email.utils
import io
import logging
import os
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from ctl_lightning.data.image_urls import ImageTarget
from ctl_lightning.io import remove_stale_temporaries, write_bytes_atomic, write_json

# httpx logs every request at INFO, which the CLI's logging shows: one line per image would bury the
# progress bar and the report, which say what matters.
logging.getLogger("httpx").setLevel(logging.WARNING)

MISSING_STATUSES = (404, 410)
DECODE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)


@dataclass(frozen=True)
class FetchSettings:
    concurrency: int = 16
    rate: float = 10.0  # request starts per second, retries included; 0: no limit
    timeout: float = 30.0  # seconds one request may take, from connecting to the last byte
    retries: int = 5  # further attempts after the first
    backoff: float = 1.0  # the first retry waits about this long, doubling each time
    max_delay: float = 120.0  # cap on any one wait, Retry-After included
    max_bytes: int = 32 << 20  # a larger body is not an image of these datasets
    verify: bool = False  # decode files already present instead of reading their header only


class Failure(Exception):
    """An attempt that gave no keepable image; ``reason`` is the report's row, ``detail`` the last error."""

    def __init__(self, reason: str, detail: str, retryable: bool = True, retry_after: float | None = None):
        super().__init__(detail)
        self.reason, self.detail, self.retryable, self.retry_after = reason, detail, retryable, retry_after


@dataclass
class DownloadReport:
    """Counts for the final table, and every image that did not arrive with its last error."""

    total: int = 0
    fetched: int = 0
    present: int = 0
    refetched: int = 0  # present but unreadable (its header; in full under --verify), fetched again
    bytes: int = 0
    requests: int = 0
    seconds: float = 0.0
    missing: dict[str, dict] = field(default_factory=dict)  # file name -> url, error
    failed: dict[str, dict] = field(default_factory=dict)  # file name -> url, reason, error, attempts

    def failed_by_reason(self) -> dict[str, int]:
        """Counts by reason, in name order: two runs that fail alike list their failures in the same order."""
        return dict(sorted(Counter(entry["reason"] for entry in self.failed.values()).items()))

    def rows(self) -> list[tuple[str, str]]:
        """The final table: what arrived, what did not and why, and how fast."""
        per_second = 1 / self.seconds if self.seconds else 0.0
        rows = [
            ("fetched", f"{self.fetched:,}"),
            ("already present", f"{self.present:,}"),
            ("present but unreadable, fetched again", f"{self.refetched:,}"),
            ("missing (404/410)", f"{len(self.missing):,}"),
        ]
        rows += [(f"failed after retries: {reason}", f"{n:,}") for reason, n in self.failed_by_reason().items()]
        speed = f"{self.fetched * per_second:,.1f} images/s, {self.bytes / 1e6 * per_second:,.2f} MB/s"
        return [
            *rows,
            ("bytes", f"{self.bytes:,} ({self.bytes / 1000000.0:,.1f} MB)"),
            ("rate", f"{speed} ({self.requests:,} requests in {self.seconds:,.1f} s)"),
        ]

    def save(self, path: Path) -> None:
        """``download_report.json``, atomically and as strict JSON."""
        counts = {k: getattr(self, k) for k in ("total", "fetched", "present", "refetched", "bytes", "requests")}
        payload = {
            **counts,
            "seconds": round(self.seconds, 3),
            "failed_by_reason": self.failed_by_reason(),
            "missing": dict(sorted(self.missing.items())),  # by name: completion order is the network's
            "failed": dict(sorted(self.failed.items())),
        }
        write_json(path, payload)


class RequestPacer:
    """Spaces request starts ``1/rate`` seconds apart, and holds them all while the server asked to wait."""

    def __init__(self, rate: float):
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.next_start = 0.0
        self.held_until = 0.0

    async def wait_turn(self) -> None:
        """Wait for a free slot; one that a hold overtook while waiting is given up for a slot after the hold."""
        while True:
            now = time.monotonic()
            start = max(now, self.next_start, self.held_until)
            self.next_start = start + self.interval
            await asyncio.sleep(start - now)
            if time.monotonic() >= self.held_until:
                return

    def hold(self, seconds: float) -> None:
        self.held_until = max(self.held_until, time.monotonic() + seconds)


def retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` as seconds: a number of seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def decode_problem(image: str | Path | io.BytesIO, full: bool = True) -> str:
    """Why Pillow cannot read ``image`` (empty when it can); ``full=False`` reads the header only."""
    try:
        with Image.open(image) as opened:
            if full:
                opened.load()
        return ""
    except FileNotFoundError:
        return "file not found"
    except DECODE_ERRORS as error:
        return f"{type(error).__name__}: {error}"


def check_body(body: bytes, content_type: str) -> None:
    head = body[:512].lstrip().lower()
    if content_type.startswith("text/html") or head.startswith((b"<!doctype html", b"<html")):
        raise Failure("HTML page", f"an HTML page ({len(body)} bytes, {content_type or 'no Content-Type'}) instead of an image")
    problem = decode_problem(io.BytesIO(body))
    if problem:
        raise Failure("not an image", problem)


def _check_status(response: httpx.Response) -> None:
    status = response.status_code
    if status == 200:
        return
    error = f"HTTP {status} {response.reason_phrase}".strip()
    if status in MISSING_STATUSES:
        raise Failure("missing", error, retryable=False)
    retryable = status == 429 or status >= 500
    raise Failure(f"HTTP {status}", error, retryable, retry_after_seconds(response.headers.get("retry-after")))


async def _read_body(response: httpx.Response, max_bytes: int) -> bytes:
    expected = response.headers.get("content-length")
    if expected and expected.isdigit() and int(expected) > max_bytes:
        raise Failure("too large", f"Content-Length {expected} is over {max_bytes} bytes", retryable=False)
    body = bytearray()
    try:
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > max_bytes:
                raise Failure("too large", f"body is over {max_bytes} bytes", retryable=False)
    except (httpx.RemoteProtocolError, httpx.ReadError) as error:
        of = f" of {expected}" if expected else ""
        raise Failure("truncated body", f"connection ended after {len(body)}{of} bytes ({_describe(error)})") from None
    return bytes(body)


async def _get_image(client: httpx.AsyncClient, url: str, settings: FetchSettings) -> bytes:
    """One attempt: the validated image bytes, or :class:`Failure`."""

    async def get() -> bytes:
        async with client.stream("GET", url) as response:
            _check_status(response)
            body = await _read_body(response, settings.max_bytes)
            await asyncio.to_thread(check_body, body, response.headers.get("content-type", ""))
            return body

    try:
        return await asyncio.wait_for(get(), settings.timeout)
    except (TimeoutError, httpx.TimeoutException):
        raise Failure("timeout", f"no complete response within {settings.timeout:g} s") from None
    except httpx.TransportError as error:
        raise Failure("connection error", _describe(error)) from None
    except httpx.RequestError as error:  # too many redirects, an undecodable Content-Encoding
        raise Failure("bad response", _describe(error)) from None


def _describe(error: BaseException) -> str:
    """``ReadError: [Errno 104] Connection reset by peer``: httpx's errors often carry no text, their causes do."""
    cause = error
    for _ in range(8):  # a chain is short; the bound guards against a cycle
        inner = cause.__cause__ or cause.__context__
        if str(cause) or inner is None:
            break
        cause = inner
    return f"{type(error).__name__}: {cause}"


def _delay(failure: Failure, attempt: int, settings: FetchSettings) -> float:
    """Exponential backoff with jitter (half fixed, half random), never shorter than Retry-After."""
    backoff = settings.backoff * 2**attempt
    jittered = backoff / 2 + random.uniform(0, backoff / 2)
    return min(settings.max_delay, max(jittered, failure.retry_after or 0.0))


async def _fetch(
    client: httpx.AsyncClient, pacer: RequestPacer, target: ImageTarget, settings: FetchSettings, report: DownloadReport
) -> None:
    for attempt in range(settings.retries + 1):
        await pacer.wait_turn()
        report.requests += 1
        try:
            body = await _get_image(client, target.url, settings)
        except Failure as failure:
            if failure.reason == "missing":
                report.missing[target.path.name] = {"url": target.url, "error": failure.detail}
                return
            if not failure.retryable or attempt == settings.retries:
                report.failed[target.path.name] = {
                    "url": target.url,
                    "reason": failure.reason,
                    "error": failure.detail,
                    "attempts": attempt + 1,
                }
                return
            delay = _delay(failure, attempt, settings)
            if failure.retry_after is not None:
                pacer.hold(delay)
            await asyncio.sleep(delay)
            continue
        await asyncio.to_thread(write_bytes_atomic, target.path, body)
        report.fetched += 1
        report.bytes += len(body)
        return


async def _already_here(target: ImageTarget, settings: FetchSettings, report: DownloadReport) -> bool:
    if not target.path.is_file():
        return False
    if not await asyncio.to_thread(decode_problem, target.path, settings.verify):
        report.present += 1
        return True
    report.refetched += 1
    return False


async def _run(targets: Sequence[ImageTarget], settings: FetchSettings, report: DownloadReport, progress: tqdm) -> None:
    pacer = RequestPacer(settings.rate)
    pending = iter(targets)  # shared by the workers: each takes the next target
    limits = httpx.Limits(max_connections=settings.concurrency, max_keepalive_connections=settings.concurrency)
    async with httpx.AsyncClient(timeout=settings.timeout, limits=limits, follow_redirects=True) as client:

        async def worker() -> None:
            for target in pending:
                if not await _already_here(target, settings, report):
                    await _fetch(client, pacer, target, settings, report)
                progress.update()
                progress.set_postfix(failed=len(report.failed), missing=len(report.missing), refresh=False)

        await asyncio.gather(*(worker() for _ in range(settings.concurrency)))


def download(targets: Sequence[ImageTarget], settings: FetchSettings = FetchSettings(), progress: bool = True) -> DownloadReport:
    """Fetch every target not already present; the counts and failures are in the report."""
    folders = sorted({target.path.parent for target in targets})
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(folder)
    report = DownloadReport(total=len(targets))
    start = time.monotonic()
    with tqdm(total=len(targets), unit="image", desc="download", disable=None if progress else True) as bar:
        asyncio.run(_run(targets, settings, report, bar))
    report.seconds = time.monotonic() - start
    for folder in folders:  # make the renames themselves durable
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
    return report
