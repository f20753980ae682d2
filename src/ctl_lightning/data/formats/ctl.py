"""Complete the Look (Pinterest, KDD 2020): raw product TSV, triplet TSV and FITB JSON.

Formats, as in docs/DESIGN.md section 2:

* raw TSV: ``image_signature, bounding_x, bounding_y, bounding_width, bounding_height, label``; rows
  sharing a signature form one outfit (one collage ``<signature>.jpg``). The real file's header is
  separated by spaces while its data rows are separated by tabs, so the header is recognised by its
  first word rather than split like a row.
* triplet TSV: 18 columns, the six fields above for anchor, positive and negative.
* FITB JSON: ``[{"question": [item, ...], "answers": [item, ...]}]`` with numbers stored as strings;
  the correct answer is ``answers[0]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ctl_lightning.data.formats.common import (
    ParseResult,
    RowPolicy,
    RowRejected,
    load_json_list,
    parse_label,
    parse_xywh,
    read_text_lines,
    with_records,
)
from ctl_lightning.errors import DataFormatError

RAW_FIELDS = ("image_signature", "bounding_x", "bounding_y", "bounding_width", "bounding_height", "label")
TRIPLET_ROLES = ("anchor", "positive", "negative")


@dataclass(frozen=True)
class CtlItem:
    """One product: a box in an outfit collage."""

    signature: str
    x: float
    y: float
    w: float
    h: float
    label: str

    @property
    def key(self) -> str:
        """Stable product key, ``signature@x,y,w,h``; 4 decimals absorb formatting differences between files."""
        return product_key(self.signature, (self.x, self.y, self.w, self.h))


def product_key(signature: str, box: Sequence[float]) -> str:
    return f"{signature}@" + ",".join(f"{v:.4f}" for v in box)


def _parse_item(fields: Sequence[str]) -> CtlItem:
    signature = fields[0].strip()
    if not signature:
        raise RowRejected("empty signature")
    x, y, w, h = parse_xywh([f.strip() for f in fields[1:5]])
    return CtlItem(signature, x, y, w, h, parse_label(fields[5]))


def _is_header(fields: Sequence[str]) -> bool:
    return fields[0].strip().lower().startswith("image_signature")


def _read_tsv(path: str | Path, n_fields: int, on_error: str, parse) -> ParseResult:
    path = Path(path)
    policy = RowPolicy(path, on_error)
    records = []
    n_lines = 0
    n_data = 0
    for number, text in read_text_lines(path):
        n_lines += 1
        fields = text.split("\t")
        if n_lines == 1 and _is_header(text.split()):
            continue
        n_data += 1
        try:
            if len(fields) != n_fields:
                raise RowRejected("wrong number of fields", f"expected {n_fields} tab-separated fields, got {len(fields)}")
            records.append(parse(fields))
        except RowRejected as rejected:
            policy.reject(number, rejected)
    if n_lines == 0:
        raise DataFormatError(path, None, "file is empty")
    if n_data == 0:
        raise DataFormatError(path, None, "file has a header but no data rows")
    return with_records(ParseResult(path, records, policy.skipped), "data row")


def read_ctl_raw(path: str | Path, on_error: str = "raise") -> ParseResult[CtlItem]:
    """Read ``raw_{train,test}.tsv``: one :class:`CtlItem` per product row, in file order."""
    return _read_tsv(path, len(RAW_FIELDS), on_error, _parse_item)


def read_ctl_triplets(path: str | Path, on_error: str = "raise") -> ParseResult[tuple[CtlItem, CtlItem, CtlItem]]:
    """Read an 18-column triplet TSV into ``(anchor, positive, negative)`` items."""

    def parse(fields: Sequence[str]) -> tuple[CtlItem, CtlItem, CtlItem]:
        return tuple(_parse_item(fields[6 * i : 6 * i + 6]) for i in range(3))  # type: ignore[return-value]

    return _read_tsv(path, 3 * len(RAW_FIELDS), on_error, parse)


@dataclass(frozen=True)
class FitbQuestion:
    """Fill in the blank: the outfit's other items, and candidates whose first is the right one."""

    question: tuple[CtlItem, ...]
    answers: tuple[CtlItem, ...]


def _item_from_json(obj: object) -> CtlItem:
    if not isinstance(obj, dict):
        raise RowRejected("malformed item", f"expected an object, got {type(obj).__name__}")
    missing = [k for k in ("signature", "x", "y", "w", "h", "label") if k not in obj]
    if missing:
        raise RowRejected("wrong number of fields", f"missing {', '.join(missing)}")
    return _parse_item([str(obj["signature"]), obj["x"], obj["y"], obj["w"], obj["h"], obj["label"]])


def read_ctl_fitb(path: str | Path, on_error: str = "raise") -> ParseResult[FitbQuestion]:
    """Read a FITB JSON file. Errors give the question's line and its index (real files may be one line)."""
    path = Path(path)
    data = load_json_list(path, "question")
    policy = RowPolicy(path, on_error)
    questions = []
    for index, entry in enumerate(data):
        try:
            if not isinstance(entry, dict) or "question" not in entry or "answers" not in entry:
                raise RowRejected("malformed question", "expected keys 'question' and 'answers'")
            if not isinstance(entry["question"], list) or not isinstance(entry["answers"], list):
                raise RowRejected("malformed question", "'question' and 'answers' must be lists of items")
            if not entry["answers"]:
                raise RowRejected("malformed question", "no answers")
            question = tuple(_item_from_json(item) for item in entry["question"])
            answers = tuple(_item_from_json(item) for item in entry["answers"])
            questions.append(FitbQuestion(question, answers))
        except RowRejected as rejected:
            policy.reject_entry(index, rejected, subject=f"question {index}")
    return with_records(ParseResult(path, questions, policy.skipped), "question")


def group_outfits(items: Sequence[CtlItem]) -> dict[str, list[CtlItem]]:
    """Outfits are the rows sharing a signature; order of first appearance is kept."""
    outfits: dict[str, list[CtlItem]] = {}
    for item in items:
        outfits.setdefault(item.signature, []).append(item)
    return outfits
