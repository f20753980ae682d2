"""Polyvore Outfits (Vasileva et al., ECCV 2018): item metadata, outfit lists and question files.

Layout of ``polyvore_outfits/``, as in docs/DESIGN.md section 2:

* ``polyvore_item_metadata.json``: ``{item_id: {"semantic_category", ...}}``;
* ``images/<item_id>.jpg``, one product per image;
* ``nondisjoint/`` and ``disjoint/``, each with ``{train,valid,test}.json`` (``[{"set_id", "items":
  [{"item_id", "index"}]}]``), ``compatibility_{split}.txt`` (``label <set_id>_<index> ...``) and
  ``fill_in_blank_{split}.json`` (``[{"question": [tokens], "answers": [tokens], "blank_position"}]``).

A token ``<set_id>_<index>`` names an item by its place in an outfit of the same split, so the question
files are checked against the outfits read before them. The right FITB answer is the one whose set_id
is the question's (not always the first). JSON files have no rows: a bad entry is reported at the line
where it starts, and the message names its index in the file (``outfit 3``, ``question 7``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from ctl_lightning.data.formats.common import (
    ParseResult,
    RowPolicy,
    RowRejected,
    load_json_list,
    load_json_mapping,
    parse_label,
    read_text_lines,
    with_records,
)
from ctl_lightning.errors import CtlError, DataFormatError

METADATA_FILE = "polyvore_item_metadata.json"
SPLITS = ("nondisjoint", "disjoint")
PARTS = ("train", "valid", "test")


@dataclass(frozen=True)
class PolyvoreItem:
    token: str  # ``<set_id>_<index>``: the item's place in its outfit, as the question files name it
    item_id: str
    category: str  # semantic_category


@dataclass(frozen=True)
class PolyvoreOutfit:
    set_id: str
    items: tuple[PolyvoreItem, ...]


@dataclass(frozen=True)
class CompatibilityQuestion:
    label: int  # 1: a real outfit; 0: a made-up one
    tokens: tuple[str, ...]


@dataclass(frozen=True)
class PolyvoreFitbQuestion:
    question: tuple[str, ...]
    answers: tuple[str, ...]
    correct: int  # index into answers of the one from the question's outfit
    blank_position: int


def set_id_of(token: str) -> str:
    return token.rpartition("_")[0]


def _check_tokens(tokens: object, known: Collection[str], what: str) -> tuple[str, ...]:
    """``tokens`` as a tuple of well-formed ``<set_id>_<index>`` strings that name items of ``known``."""
    if not isinstance(tokens, list) or not tokens:
        raise RowRejected("malformed question", f"'{what}' must be a non-empty list of <set_id>_<index> tokens")
    for token in tokens:
        set_id, _, index = str(token).rpartition("_")
        if not isinstance(token, str) or not set_id or not index.isdigit():
            raise RowRejected("malformed token", f"{token!r} in '{what}' is not <set_id>_<index>")
        if token not in known:
            raise RowRejected("unknown item", f"{token} in '{what}' names no item of the split's outfits")
    return tuple(tokens)


def read_polyvore_metadata(path: str | Path, on_error: str = "raise") -> ParseResult[tuple[str, str]]:
    """``polyvore_item_metadata.json`` as ``(item_id, semantic_category)`` pairs."""
    path = Path(path)
    data = load_json_mapping(path, "item_id to its metadata", "item")
    policy = RowPolicy(path, on_error)
    pairs = []
    for item_id, meta in data.items():
        try:
            if not isinstance(meta, dict):
                raise RowRejected("malformed item", f"expected an object, got {type(meta).__name__}")
            pairs.append((item_id, parse_label(meta.get("semantic_category"))))
        except RowRejected as rejected:
            policy.reject_entry(item_id, rejected, subject=f"item {item_id}")
    return with_records(ParseResult(path, pairs, policy.skipped), "item")


def _parse_outfit(entry: object, category_of: Mapping[str, str]) -> PolyvoreOutfit:
    if not isinstance(entry, dict) or "set_id" not in entry or not isinstance(entry.get("items"), list):
        raise RowRejected("malformed outfit", "expected {'set_id', 'items': [{'item_id', 'index'}]}")
    set_id = str(entry["set_id"]).strip()
    if not set_id:
        raise RowRejected("malformed outfit", "empty set_id")
    if not entry["items"]:
        raise RowRejected("empty outfit", f"set_id {set_id} has no items")
    items, seen = [], set()
    for item in entry["items"]:
        if not isinstance(item, dict) or "item_id" not in item or "index" not in item:
            raise RowRejected("malformed item", f"set_id {set_id}: expected {{'item_id', 'index'}}, got {item!r}")
        index, item_id = str(item["index"]).strip(), str(item["item_id"]).strip()
        if not index.isdigit():
            raise RowRejected("malformed item", f"set_id {set_id}: index {item['index']!r} is not a whole number")
        if index in seen:
            raise RowRejected("duplicate item index", f"set_id {set_id}: index {index} twice")
        if item_id not in category_of:
            raise RowRejected("unknown item id", f"set_id {set_id}: item_id {item_id!r} is not in {METADATA_FILE}")
        seen.add(index)
        items.append(PolyvoreItem(f"{set_id}_{index}", item_id, category_of[item_id]))
    return PolyvoreOutfit(set_id, tuple(items))


def read_polyvore_outfits(path: str | Path, category_of: Mapping[str, str], on_error: str = "raise") -> ParseResult[PolyvoreOutfit]:
    """``{train,valid,test}.json``; an outfit naming an item missing from the metadata is rejected whole."""
    path = Path(path)
    policy = RowPolicy(path, on_error)
    outfits, set_ids = [], set()
    for index, entry in enumerate(load_json_list(path, "outfit")):
        try:
            outfit = _parse_outfit(entry, category_of)
            if outfit.set_id in set_ids:
                raise RowRejected("duplicate set_id", f"set_id {outfit.set_id} is listed twice")
            set_ids.add(outfit.set_id)
            outfits.append(outfit)
        except RowRejected as rejected:
            policy.reject_entry(index, rejected, subject=f"outfit {index}")
    return with_records(ParseResult(path, outfits, policy.skipped), "outfit")


def read_polyvore_compatibility(path: str | Path, known: Collection[str], on_error: str = "raise") -> ParseResult[CompatibilityQuestion]:
    """``compatibility_{split}.txt``: a 0/1 label, then the outfit's tokens (items of ``known``)."""
    path = Path(path)
    policy = RowPolicy(path, on_error)
    questions = []
    for number, text in read_text_lines(path):
        label, *tokens = text.split()
        try:
            if label not in ("0", "1"):
                raise RowRejected("malformed label", f"expected 0 or 1, got {label!r}")
            if len(tokens) < 2:
                raise RowRejected("too few items", f"an outfit needs two items to have a pair, got {len(tokens)}")
            questions.append(CompatibilityQuestion(int(label), _check_tokens(tokens, known, "outfit")))
        except RowRejected as rejected:
            policy.reject(number, rejected)
    if not questions and not policy.skipped:
        raise DataFormatError(path, None, "file is empty")
    result = with_records(ParseResult(path, questions, policy.skipped), "line")
    if len({q.label for q in questions}) < 2:
        raise DataFormatError(path, None, "needs outfits of both labels (1 and 0) for an AUC")
    return result


def _parse_fitb(entry: object, known: Collection[str]) -> PolyvoreFitbQuestion:
    if not isinstance(entry, dict) or not {"question", "answers", "blank_position"} <= entry.keys():
        raise RowRejected("malformed question", "expected keys 'question', 'answers' and 'blank_position'")
    question = _check_tokens(entry["question"], known, "question")
    answers = _check_tokens(entry["answers"], known, "answers")
    if len({set_id_of(t) for t in question}) > 1:
        raise RowRejected("malformed question", "its items come from several outfits")
    right = [i for i, token in enumerate(answers) if set_id_of(token) == set_id_of(question[0])]
    if len(right) != 1:
        raise RowRejected("no single right answer", f"{len(right)} answers come from the question's outfit {set_id_of(question[0])}")
    if not str(entry["blank_position"]).isdigit():
        raise RowRejected("malformed question", f"blank_position {entry['blank_position']!r} is not a whole number")
    return PolyvoreFitbQuestion(question, answers, right[0], int(entry["blank_position"]))


def read_polyvore_fitb(path: str | Path, known: Collection[str], on_error: str = "raise") -> ParseResult[PolyvoreFitbQuestion]:
    """``fill_in_blank_{split}.json``; every token must name an item of ``known``."""
    path = Path(path)
    policy = RowPolicy(path, on_error)
    questions = []
    for index, entry in enumerate(load_json_list(path, "question")):
        try:
            questions.append(_parse_fitb(entry, known))
        except RowRejected as rejected:
            policy.reject_entry(index, rejected, subject=f"question {index}")
    return with_records(ParseResult(path, questions, policy.skipped), "question")


@dataclass
class PolyvoreSplit:
    """One split (nondisjoint or disjoint) as read: outfits per part and the test question files."""

    outfits: dict[str, list[PolyvoreOutfit]]  # by part: train, valid, test
    compatibility: list[CompatibilityQuestion]
    fitb: list[PolyvoreFitbQuestion]
    results: list[ParseResult]  # every file read, for their skip counts


def read_polyvore_split(root: str | Path, split: str, on_error: str = "raise") -> PolyvoreSplit:
    """Read ``root/polyvore_item_metadata.json`` and ``root/<split>/``; question tokens are checked
    against the test outfits, which they name."""
    if split not in SPLITS:
        raise CtlError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    root = Path(root)
    metadata = read_polyvore_metadata(root / METADATA_FILE, on_error)
    category_of = dict(metadata.records)
    results: list[ParseResult] = [metadata]
    outfits = {}
    for part in PARTS:
        results.append(read_polyvore_outfits(root / split / f"{part}.json", category_of, on_error))
        outfits[part] = results[-1].records
    known = {item.token for outfit in outfits["test"] for item in outfit.items}
    compatibility = read_polyvore_compatibility(root / split / "compatibility_test.txt", known, on_error)
    fitb = read_polyvore_fitb(root / split / "fill_in_blank_test.json", known, on_error)
    return PolyvoreSplit(outfits, compatibility.records, fitb.records, [*results, compatibility, fitb])
