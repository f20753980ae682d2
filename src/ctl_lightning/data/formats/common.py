"""What every annotation reader shares: line reading, box checks and the on-error policy.

A reader either stops at the first bad row with a ``FILE:LINE: problem`` error (``on_error="raise"``,
the default) or skips it and counts it by reason (``on_error="skip"``). Nothing is dropped without
being counted: the counts travel with the records in :class:`ParseResult` and end up in the
product store's manifest and in the log.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from ctl_lightning.errors import CtlError, DataFormatError

T = TypeVar("T")

ON_ERROR_CHOICES = ("raise", "skip")

# Boxes are normalized; annotation tools round, so allow a hair past the border.
BOX_TOLERANCE = 1e-6


class RowRejected(Exception):
    """Internal signal: this row is bad for ``reason``; the policy decides whether to raise or skip."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass
class ParseResult(Generic[T]):
    """Records read from one file, plus the rows skipped under ``on_error="skip"``, by reason."""

    path: Path
    records: list[T]
    skipped: Counter = field(default_factory=Counter)

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def skip_reasons(self) -> str:
        """Such as ``2 box outside [0,1], 1 empty label``, most frequent first."""
        return ", ".join(f"{n} {reason}" for reason, n in self.skipped.most_common())

    def skip_summary(self) -> str:
        """One line such as ``raw.tsv: skipped 3 rows (2 box outside [0,1], 1 empty label)``; empty if none."""
        if not self.skipped:
            return ""
        return f"{self.path}: skipped {self.n_skipped} rows ({self.skip_reasons()})"


class RowPolicy:
    """Applies ``on_error`` to rejected rows and keeps the skip counts."""

    def __init__(self, path: Path, on_error: str):
        if on_error not in ON_ERROR_CHOICES:
            raise CtlError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}")
        self.path = path
        self.on_error = on_error
        self.skipped: Counter = Counter()

    def reject(self, where: int | str | None, rejected: RowRejected, subject: str = "") -> None:
        """``subject`` names the entry when the line alone does not (``question 3`` of a one-line JSON file)."""
        if self.on_error == "raise":
            raise DataFormatError(self.path, where, f"{subject}: {rejected}" if subject else str(rejected))
        self.skipped[rejected.reason] += 1

    def reject_entry(self, key: object, rejected: RowRejected, subject: str) -> None:
        """:meth:`reject` for an entry of a whole-file JSON document (a list index or object key).

        JSON keeps no positions, so the entry's line is found by rescanning the file, only when the
        policy is about to raise (once); skipping needs no line.
        """
        line = json_entry_lines(read_text(self.path)).get(key) if self.on_error == "raise" else None
        self.reject(line, rejected, subject)


def _not_utf8(path: Path, error: UnicodeDecodeError) -> DataFormatError:
    """The decoder works on blocks, not lines: find the line of the first bad byte again."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as bad:
                return DataFormatError(path, number, f"not UTF-8 text (byte 0x{raw[bad.start]:02x} at column {bad.start + 1})")
    return DataFormatError(path, None, f"not UTF-8 text ({error.reason})")


def read_text_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for non-blank lines; a UTF-8 BOM and CRLF endings are accepted."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, None, "file not found")
    with open(path, encoding="utf-8-sig", newline=None) as handle:
        try:
            for number, line in enumerate(handle, start=1):
                text = line.rstrip("\r\n")
                if text.strip():
                    yield number, text
        except UnicodeDecodeError as error:
            raise _not_utf8(path, error) from None


def read_text(path: str | Path) -> str:
    """The whole file as text, BOM removed and line endings normalized."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, None, "file not found")
    with open(path, encoding="utf-8-sig", newline=None) as handle:
        try:
            return handle.read()
        except UnicodeDecodeError as error:
            raise _not_utf8(path, error) from None


def load_json_document(path: str | Path) -> object:
    """Parse a whole-file JSON document; an empty file or invalid JSON is a ``FILE:LINE`` error."""
    path = Path(path)
    text = read_text(path)
    if not text.strip():
        raise DataFormatError(path, None, "file is empty")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise DataFormatError(path, error.lineno, f"invalid JSON: {error.msg}") from None


def load_json_list(path: Path, what: str) -> list:
    """A whole-file JSON list of ``what`` entries, or a ``FILE`` error saying what was expected."""
    data = load_json_document(path)
    if not isinstance(data, list):
        raise DataFormatError(path, None, f"expected a JSON list of {what}s")
    if not data:
        raise DataFormatError(path, None, f"file has no {what}s")
    return data


def load_json_mapping(path: Path, mapping: str, what: str) -> dict:
    """A whole-file JSON object (``mapping`` says from what to what) with at least one ``what``."""
    data = load_json_document(path)
    if not isinstance(data, dict):
        raise DataFormatError(path, None, f"expected a JSON object mapping {mapping}")
    if not data:
        raise DataFormatError(path, None, f"file has no {what}s")
    return data


def with_records(result: ParseResult[T], what: str) -> ParseResult[T]:
    """``result``, or a ``FILE`` error when every ``what`` of a non-empty file was rejected."""
    if not result.records:
        raise DataFormatError(result.path, None, f"every {what} was rejected ({result.skip_reasons()})")
    return result


_JSON_SEPARATORS = re.compile(r"[\s,:]*")


def json_entry_lines(text: str) -> dict[object, int]:
    """Line on which each top-level entry of a JSON list (by index) or object (by key) starts.

    ``json`` keeps no positions, but a bad question or product should be reported by line like a TSV
    row; the document is known to be valid when this runs, so a plain scan suffices.
    """
    decoder = json.JSONDecoder()
    start = _JSON_SEPARATORS.match(text).end()
    is_object = text[start : start + 1] == "{"
    lines: dict[object, int] = {}
    pos, line, counted = start + 1, 1, 0
    index = 0
    while True:
        pos = _JSON_SEPARATORS.match(text, pos).end()
        if pos >= len(text) or text[pos] in "]}":
            return lines
        line += text.count("\n", counted, pos)
        counted = pos
        entry, pos = decoder.raw_decode(text, pos)
        if is_object:
            pos = decoder.raw_decode(text, _JSON_SEPARATORS.match(text, pos).end())[1]
        lines[entry if is_object else index] = line
        index += 1


def parse_coordinate(value: object, name: str) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise RowRejected("non-numeric coordinate", f"{name}={value!r}") from None
    if not math.isfinite(number):
        raise RowRejected("non-finite coordinate", f"{name}={value!r}")
    return number


def check_box(x: float, y: float, w: float, h: float) -> tuple[float, float, float, float]:
    """Validate a normalized ``x, y, w, h`` box (origin top-left) and return it."""
    if w <= 0 or h <= 0:
        raise RowRejected("zero-area box", f"w={w:g}, h={h:g}")
    if min(x, y) < -BOX_TOLERANCE or x + w > 1 + BOX_TOLERANCE or y + h > 1 + BOX_TOLERANCE:
        raise RowRejected("box outside [0,1]", f"x={x:g}, y={y:g}, w={w:g}, h={h:g}")
    return x, y, w, h


def box_from_text(text: str | None, what: str = "box") -> tuple[float, float, float, float] | None:
    """A user-typed normalized ``x,y,w,h`` box (commas or spaces), or None for empty input."""
    text = "" if text is None else str(text).strip()
    if not text:
        return None
    try:
        x, y, w, h = (float(v) for v in re.split(r"[,\s]+", text))
    except ValueError:
        raise CtlError(f"{what} must be four numbers x,y,w,h between 0 and 1, got {text!r}") from None
    try:
        return check_box(x, y, w, h)
    except RowRejected as rejected:
        raise CtlError(f"{what} {text}: {rejected}") from None


def parse_xywh(values: Sequence[object], names: Sequence[str] = ("x", "y", "w", "h")) -> tuple[float, ...]:
    return check_box(*(parse_coordinate(v, n) for v, n in zip(values, names)))


def parse_label(value: object) -> str:
    label = str(value).strip() if value is not None else ""
    if not label:
        raise RowRejected("empty label")
    return label
