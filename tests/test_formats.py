"""The annotation readers on the real CTL/STL files and on every kind of bad input.

Bad input either stops with ``FILE:LINE: problem`` (``on_error="raise"``) or is skipped and counted by
reason (``on_error="skip"``); the exact texts and counts are asserted.
"""

from __future__ import annotations

import functools
import json
import operator
from collections import Counter
from pathlib import Path

import pytest
from helpers import shared_file

from ctl_lightning.data.formats import (
    read_ctl_fitb,
    read_ctl_raw,
    read_ctl_triplets,
    read_stl_categories,
    read_stl_products,
)
from ctl_lightning.data.formats.ctl import group_outfits
from ctl_lightning.errors import CtlError, DataFormatError

CTL_TEST_LABELS = {
    "Shoes": 4623,
    "Handbags": 4248,
    "Shirts & Tops": 3985,
    "Pants": 2991,
    "Coats & Jackets": 2341,
    "Jewelry": 1928,
    "Hats": 1082,
    "Sunglasses": 837,
    "Skirts": 798,
    "Dresses": 764,
    "Shorts": 584,
    "Watches": 489,
    "Scarves & Shawls": 470,
}
STL_TABLE_1 = {
    "Shoes": 11780,
    "Shirts & Tops": 7506,
    "Pants": 6553,
    "Handbags, Wallets & Cases": 3255,
    "Coats & Jackets": 2485,
    "Sunglasses": 1772,
    "Shorts": 1533,
    "Skirts": 1392,
    "Earrings": 926,
    "Necklaces": 909,
}

RAW_HEADER = "image_signature bounding_x  bounding_y  bounding_width  bounding_height label"
GOOD_ROW = "a1\t0.1\t0.1\t0.2\t0.3\tShoes"
GOOD_ROW_2 = "a1\t0.5\t0.5\t0.25\t0.25\tPants"

# (case, bad fields of one product, expected problem, skip reason)
BAD_PRODUCTS = [
    ("non-numeric", ["b2", "abc", "0.1", "0.2", "0.2", "Shoes"], "non-numeric coordinate: x='abc'", "non-numeric coordinate"),
    ("empty-coordinate", ["b2", "0.1", "", "0.2", "0.2", "Shoes"], "non-numeric coordinate: y=''", "non-numeric coordinate"),
    ("nan", ["b2", "0.1", "nan", "0.2", "0.2", "Shoes"], "non-finite coordinate: y='nan'", "non-finite coordinate"),
    ("inf", ["b2", "0.1", "0.1", "inf", "0.2", "Shoes"], "non-finite coordinate: w='inf'", "non-finite coordinate"),
    ("minus-inf", ["b2", "0.1", "0.1", "0.2", "-inf", "Shoes"], "non-finite coordinate: h='-inf'", "non-finite coordinate"),
    ("outside-right", ["b2", "0.9", "0.1", "0.2", "0.2", "Shoes"], "box outside [0,1]: x=0.9, y=0.1, w=0.2, h=0.2", "box outside [0,1]"),
    (
        "outside-negative",
        ["b2", "0.1", "-0.1", "0.2", "0.2", "Shoes"],
        "box outside [0,1]: x=0.1, y=-0.1, w=0.2, h=0.2",
        "box outside [0,1]",
    ),
    ("zero-width", ["b2", "0.1", "0.1", "0", "0.2", "Shoes"], "zero-area box: w=0, h=0.2", "zero-area box"),
    ("zero-height", ["b2", "0.1", "0.1", "0.2", "0.0", "Shoes"], "zero-area box: w=0.2, h=0", "zero-area box"),
    ("empty-label", ["b2", "0.1", "0.1", "0.2", "0.2", ""], "empty label", "empty label"),
    ("blank-label", ["b2", "0.1", "0.1", "0.2", "0.2", "   "], "empty label", "empty label"),
]


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def raise_message(reader, path: Path) -> str:
    with pytest.raises(DataFormatError) as caught:
        reader(path)
    return str(caught.value)


# --------------------------------------------------------------------------- real files


@pytest.fixture(scope="module")
def real_raw():
    return read_ctl_raw(shared_file("ctl", "raw_test.tsv"))


def test_real_ctl_raw_test_counts(real_raw):
    items = real_raw.records
    assert len(items) == 25_140
    assert not real_raw.skipped
    outfits = group_outfits(items)
    assert len(outfits) == 5_028
    assert Counter(len(rows) for rows in outfits.values()) == {5: 5_028}
    assert dict(Counter(item.label for item in items)) == CTL_TEST_LABELS
    # The space-separated header is recognised, not parsed as a row; boxes are normalized.
    assert items[0].signature == "00015b9d0c08164ed3b5dbb4613bb143"
    assert (items[0].x, items[0].label) == (pytest.approx(0.0068093464), "Shirts & Tops")
    assert all(i.x >= 0 and i.x + i.w <= 1 + 1e-6 and i.y >= 0 and i.y + i.h <= 1 + 1e-6 for i in items)


def test_real_stl_categories_reproduce_table_1():
    result = read_stl_categories(shared_file("stl", "fashion-cat.json"))
    assert len(result.records) == 38_111
    assert not result.skipped
    assert dict(Counter(category for _, category in result.records)) == STL_TABLE_1


def test_crlf_and_bom_parse_identically(real_raw, tmp_path):
    raw = shared_file("ctl", "raw_test.tsv").read_bytes()
    cat = shared_file("stl", "fashion-cat.json").read_bytes()
    assert b"\r\n" not in raw
    variants = {
        "crlf": raw.replace(b"\n", b"\r\n"),
        "bom": b"\xef\xbb\xbf" + raw,
        "bom-crlf": b"\xef\xbb\xbf" + raw.replace(b"\n", b"\r\n"),
    }
    for name, data in variants.items():
        path = tmp_path / f"raw-{name}.tsv"
        path.write_bytes(data)
        result = read_ctl_raw(path)
        assert result.records == real_raw.records, name
        assert not result.skipped
    expected = read_stl_categories(shared_file("stl", "fashion-cat.json")).records
    path = tmp_path / "fashion-cat-bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + cat.replace(b'", "', b'",\r\n"'))
    assert path.read_bytes().count(b"\r\n") > 38_000
    assert read_stl_categories(path).records == expected


def test_crlf_and_bom_in_json_lines_and_fitb(tmp_path):
    rows = [{"product": f"p{i}", "scene": "s1", "bbox": [0.1, 0.1, 0.3, 0.4 + i / 10]} for i in range(3)]
    plain = write(tmp_path / "fashion.json", [json.dumps(r) for r in rows])
    odd = tmp_path / "fashion-odd.json"
    odd.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes().replace(b"\n", b"\r\n"))
    assert read_stl_products(odd).records == read_stl_products(plain).records
    assert len(read_stl_products(plain).records) == 3
    fitb = tmp_path / "fitb.json"
    fitb.write_text(json.dumps([fitb_question()], indent=1), encoding="utf-8")
    fitb_odd = tmp_path / "fitb-odd.json"
    fitb_odd.write_bytes(b"\xef\xbb\xbf" + fitb.read_bytes().replace(b"\n", b"\r\n"))
    assert read_ctl_fitb(fitb_odd).records == read_ctl_fitb(fitb).records


# --------------------------------------------------------------------------- CTL raw TSV


@pytest.mark.parametrize("case, fields, problem, reason", BAD_PRODUCTS, ids=[c[0] for c in BAD_PRODUCTS])
def test_raw_bad_row(tmp_path, case, fields, problem, reason):
    path = write(tmp_path / "raw.tsv", [RAW_HEADER, GOOD_ROW, "\t".join(fields), GOOD_ROW_2])
    assert raise_message(read_ctl_raw, path) == f"{path}:3: {problem}"
    skipped = read_ctl_raw(path, on_error="skip")
    assert skipped.skipped == {reason: 1}
    assert [i.label for i in skipped.records] == ["Shoes", "Pants"]


def test_raw_wrong_number_of_fields(tmp_path):
    path = write(tmp_path / "raw.tsv", [RAW_HEADER, GOOD_ROW, "a1\t0.1\t0.1\t0.2\tShoes", GOOD_ROW_2, GOOD_ROW + "\textra"])
    assert raise_message(read_ctl_raw, path) == f"{path}:3: wrong number of fields: expected 6 tab-separated fields, got 5"
    result = read_ctl_raw(path, on_error="skip")
    assert result.skipped == {"wrong number of fields": 2}
    assert len(result.records) == 2
    # A row separated by spaces instead of tabs is one field.
    path = write(tmp_path / "spaces.tsv", [RAW_HEADER, GOOD_ROW, GOOD_ROW.replace("\t", " ")])
    assert raise_message(read_ctl_raw, path) == f"{path}:3: wrong number of fields: expected 6 tab-separated fields, got 1"


def test_raw_skip_counts_by_reason(tmp_path):
    bad = {case: "\t".join(fields) for case, fields, _, _ in BAD_PRODUCTS}
    lines = [
        RAW_HEADER,
        GOOD_ROW,
        bad["nan"],
        bad["inf"],
        bad["zero-width"],
        "",
        GOOD_ROW_2,
        bad["empty-label"],
        bad["outside-right"],
        bad["outside-negative"],
        "a1\t0.1",
        bad["non-numeric"],
        bad["minus-inf"],
    ]
    path = write(tmp_path / "raw.tsv", lines)
    # Line numbers count blank lines too: the first bad row is line 3.
    assert raise_message(read_ctl_raw, path) == f"{path}:3: non-finite coordinate: y='nan'"
    result = read_ctl_raw(path, on_error="skip")
    assert result.skipped == {
        "non-finite coordinate": 3,
        "zero-area box": 1,
        "empty label": 1,
        "box outside [0,1]": 2,
        "wrong number of fields": 1,
        "non-numeric coordinate": 1,
    }
    assert result.n_skipped == 9
    assert len(result.records) == 2
    assert result.skip_summary() == (
        f"{path}: skipped 9 rows (3 non-finite coordinate, 2 box outside [0,1], 1 zero-area box, 1 empty label, "
        "1 wrong number of fields, 1 non-numeric coordinate)"
    )
    # Line number of a later row, once the earlier ones are gone.
    path = write(tmp_path / "raw2.tsv", [RAW_HEADER, GOOD_ROW, "", GOOD_ROW_2, bad["zero-height"]])
    assert raise_message(read_ctl_raw, path) == f"{path}:5: zero-area box: w=0.2, h=0"


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_raw_empty_and_header_only(tmp_path, on_error):
    cases = {
        "empty.tsv": ("", "file is empty"),
        "blank.tsv": ("\n  \n\n", "file is empty"),
        "bom-only.tsv": ("\ufeff", "file is empty"),
        "header.tsv": (RAW_HEADER + "\n", "file has a header but no data rows"),
        "header-crlf.tsv": ("\ufeff" + RAW_HEADER + "\r\n\r\n", "file has a header but no data rows"),
        "header-tabs.tsv": (
            "\t".join(["image_signature", "bounding_x", "bounding_y", "bounding_width", "bounding_height", "label"]) + "\n",
            "file has a header but no data rows",
        ),
    }
    for name, (text, problem) in cases.items():
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        with pytest.raises(DataFormatError) as caught:
            read_ctl_raw(path, on_error=on_error)
        assert str(caught.value) == f"{path}: {problem}", name


def test_raw_all_rows_bad_is_an_error_even_with_skip(tmp_path):
    path = write(tmp_path / "raw.tsv", [RAW_HEADER, "a\tnan\t0\t0.1\t0.1\tShoes", "a\t0\t0\t0\t0.1\tShoes", "a\t0\t0\t0.1\t0.1\t"])
    with pytest.raises(DataFormatError) as caught:
        read_ctl_raw(path, on_error="skip")
    assert str(caught.value) == f"{path}: every data row was rejected (1 non-finite coordinate, 1 zero-area box, 1 empty label)"


def test_missing_file_and_bad_policy(tmp_path):
    assert raise_message(read_ctl_raw, tmp_path / "nope.tsv") == f"{tmp_path / 'nope.tsv'}: file not found"
    path = write(tmp_path / "raw.tsv", [GOOD_ROW])
    with pytest.raises(CtlError, match="on_error must be one of"):
        read_ctl_raw(path, on_error="ignore")


def test_raw_without_header_and_error_attributes(tmp_path):
    path = write(tmp_path / "raw.tsv", [GOOD_ROW, GOOD_ROW_2, "a1\t0.1\t0.1\t0.2\t0.2\t"])
    with pytest.raises(DataFormatError) as caught:
        read_ctl_raw(path)
    assert (caught.value.path, caught.value.line, caught.value.problem) == (str(path), 3, "empty label")
    items = read_ctl_raw(path, on_error="skip").records
    assert [(i.signature, i.x, i.y, i.w, i.h, i.label) for i in items] == [
        ("a1", 0.1, 0.1, 0.2, 0.3, "Shoes"),
        ("a1", 0.5, 0.5, 0.25, 0.25, "Pants"),
    ]
    assert items[0].key == "a1@0.1000,0.1000,0.2000,0.3000"


# --------------------------------------------------------------------------- CTL triplet TSV

ANCHOR = ["o1", "0.1", "0.1", "0.2", "0.2", "Shirts & Tops"]
POSITIVE = ["o1", "0.5", "0.5", "0.2", "0.4", "Pants"]
NEGATIVE = ["o2", "0.3", "0.3", "0.2", "0.4", "Pants"]
GOOD_TRIPLET = "\t".join(ANCHOR + POSITIVE + NEGATIVE)


def test_triplets_read(tmp_path):
    header = "\t".join(f"{role}_{f}" if i else "image_signature" for role in ("a", "p", "n") for i, f in enumerate("sxywhl"))
    path = write(tmp_path / "triplets.tsv", [header, GOOD_TRIPLET, GOOD_TRIPLET.replace("o2", "o3")])
    result = read_ctl_triplets(path)
    assert len(result.records) == 2
    anchor, positive, negative = result.records[1]
    assert (anchor.label, positive.label, negative.label, negative.signature) == ("Shirts & Tops", "Pants", "Pants", "o3")
    assert positive.h == 0.4


@pytest.mark.parametrize("role", [0, 1, 2])
@pytest.mark.parametrize("case, fields, problem, reason", BAD_PRODUCTS, ids=[c[0] for c in BAD_PRODUCTS])
def test_triplets_bad_row(tmp_path, role, case, fields, problem, reason):
    members = [ANCHOR, POSITIVE, NEGATIVE]
    members[role] = fields
    path = write(tmp_path / "triplets.tsv", [GOOD_TRIPLET, GOOD_TRIPLET, "\t".join(functools.reduce(operator.iadd, members, []))])
    assert raise_message(read_ctl_triplets, path) == f"{path}:3: {problem}"
    result = read_ctl_triplets(path, on_error="skip")
    assert (len(result.records), result.skipped) == (2, {reason: 1})


def test_triplets_wrong_number_of_fields(tmp_path):
    six = "\t".join(ANCHOR)
    path = write(tmp_path / "triplets.tsv", [GOOD_TRIPLET, six, GOOD_TRIPLET + "\tx", GOOD_TRIPLET])
    assert raise_message(read_ctl_triplets, path) == f"{path}:2: wrong number of fields: expected 18 tab-separated fields, got 6"
    result = read_ctl_triplets(path, on_error="skip")
    assert (len(result.records), result.skipped) == (2, {"wrong number of fields": 2})


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_triplets_empty_header_only_and_all_bad(tmp_path, on_error):
    header = "\t".join(["image_signature"] + [f"c{i}" for i in range(17)])
    for name, lines, problem in [
        ("empty.tsv", [], "file is empty"),
        ("header.tsv", [header], "file has a header but no data rows"),
        (
            "allbad.tsv",
            [GOOD_TRIPLET.replace("0.5", "nan"), GOOD_TRIPLET.replace("Pants", "")],
            "every data row was rejected (1 non-finite coordinate, 1 empty label)",
        ),
    ]:
        path = write(tmp_path / name, lines)
        if on_error == "raise" and name == "allbad.tsv":
            problem = "1: non-finite coordinate: x='nan'"
            with pytest.raises(DataFormatError) as caught:
                read_ctl_triplets(path, on_error=on_error)
            assert str(caught.value) == f"{path}:{problem}"
            continue
        with pytest.raises(DataFormatError) as caught:
            read_ctl_triplets(path, on_error=on_error)
        assert str(caught.value) == f"{path}: {problem}"


# --------------------------------------------------------------------------- CTL FITB JSON


def item(signature="o1", x="0.1", y="0.1", w="0.2", h="0.2", label="Shoes") -> dict:
    return dict(signature=signature, x=x, y=y, w=w, h=h, label=label)


def fitb_question(blank: dict | None = None) -> dict:
    blank = blank or item(label="Pants", x="0.5")
    return {
        "question": [item(), item(label="Hats", y="0.6")],
        "answers": [blank, item("o2", label="Pants"), item("o3", label="Pants"), item("o4", label="Pants")],
    }


def write_fitb(path: Path, questions: list[dict]) -> Path:
    """One question per line: question ``i`` is on line ``i + 2``."""
    path.write_text("[\n" + ",\n".join(json.dumps(q) for q in questions) + "\n]\n", encoding="utf-8")
    return path


def test_fitb_read(tmp_path):
    path = write_fitb(tmp_path / "fitb.json", [fitb_question(), fitb_question()])
    questions = read_ctl_fitb(path).records
    assert len(questions) == 2
    q = questions[0]
    assert [i.label for i in q.question] == ["Shoes", "Hats"]
    assert len(q.answers) == 4 and q.answers[0].label == "Pants" and q.answers[0].x == 0.5  # numbers were strings
    assert {a.label for a in q.answers} == {"Pants"}


@pytest.mark.parametrize("in_answers", [False, True])
@pytest.mark.parametrize("case, fields, problem, reason", BAD_PRODUCTS, ids=[c[0] for c in BAD_PRODUCTS])
def test_fitb_bad_item(tmp_path, in_answers, case, fields, problem, reason):
    bad = dict(zip(("signature", "x", "y", "w", "h", "label"), fields))
    broken = fitb_question(blank=bad) if in_answers else {**fitb_question(), "question": [item(), bad]}
    path = write_fitb(tmp_path / "fitb.json", [fitb_question(), fitb_question(), broken, fitb_question()])
    assert raise_message(read_ctl_fitb, path) == f"{path}:4: question 2: {problem}"
    result = read_ctl_fitb(path, on_error="skip")
    assert (len(result.records), result.skipped) == (3, {reason: 1})


def test_fitb_wrong_number_of_fields_and_malformed(tmp_path):
    questions = [
        fitb_question(),
        fitb_question(blank={"signature": "o1", "x": "0.1", "y": "0.1", "w": "0.2"}),
        {"question": [item()]},
        {"question": "o1", "answers": [item()]},
        {"question": [item()], "answers": []},
        fitb_question(),
    ]
    path = write_fitb(tmp_path / "fitb.json", questions)
    assert raise_message(read_ctl_fitb, path) == f"{path}:3: question 1: wrong number of fields: missing h, label"
    result = read_ctl_fitb(path, on_error="skip")
    assert (len(result.records), result.skipped) == (2, {"wrong number of fields": 1, "malformed question": 3})
    one_line = tmp_path / "one-line.json"
    one_line.write_text(json.dumps(questions[:3]), encoding="utf-8")
    assert raise_message(read_ctl_fitb, one_line) == f"{one_line}:1: question 1: wrong number of fields: missing h, label"
    indented = tmp_path / "indented.json"
    indented.write_text(json.dumps(questions[3:5], indent=1), encoding="utf-8")
    assert raise_message(read_ctl_fitb, indented) == (
        f"{indented}:2: question 0: malformed question: 'question' and 'answers' must be lists of items"
    )


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_fitb_empty_and_whole_file_problems(tmp_path, on_error):
    cases = {
        "": "file is empty",
        " \n\n": "file is empty",
        "[]": "file has no questions",  # the JSON counterpart of a header-only file
        '{"question": []}': "expected a JSON list of questions",
        '[{"question": [],\n': "2: invalid JSON: Expecting property name enclosed in double quotes",
    }
    for i, (text, problem) in enumerate(cases.items()):
        path = tmp_path / f"fitb{i}.json"
        path.write_text(text, encoding="utf-8")
        with pytest.raises(DataFormatError) as caught:
            read_ctl_fitb(path, on_error=on_error)
        sep = ":" if problem[0].isdigit() else ": "
        assert str(caught.value) == f"{path}{sep}{problem}", text


def test_fitb_all_questions_bad_is_an_error_even_with_skip(tmp_path):
    path = write_fitb(tmp_path / "fitb.json", [fitb_question(blank=item(x="nan")), fitb_question(blank=item(label=""))])
    with pytest.raises(DataFormatError) as caught:
        read_ctl_fitb(path, on_error="skip")
    assert str(caught.value) == f"{path}: every question was rejected (1 non-finite coordinate, 1 empty label)"


# --------------------------------------------------------------------------- STL fashion.json


def stl_row(product="p1", scene="s1", bbox=(0.1, 0.2, 0.5, 0.8), drop=()) -> str:
    row = {"product": product, "scene": scene, "bbox": list(bbox)}
    for key in drop:
        del row[key]
    return json.dumps(row)


def test_stl_products_read_corners_as_xywh(tmp_path):
    path = write(tmp_path / "fashion.json", [stl_row(), stl_row("p2", "s2", ("0.25", "0", "1", "0.5"))])
    a, b = read_stl_products(path).records
    assert (a.product, a.scene) == ("p1", "s1")
    assert (a.x, a.y, a.w, a.h) == pytest.approx((0.1, 0.2, 0.4, 0.6))
    assert (b.x, b.y, b.w, b.h) == pytest.approx((0.25, 0.0, 0.75, 0.5))


STL_BAD = [
    (
        "bbox-3",
        stl_row(bbox=(0.1, 0.2, 0.5)),
        "wrong number of fields: bbox must be [left, top, right, bottom], got [0.1, 0.2, 0.5]",
        "wrong number of fields",
    ),
    ("missing-key", stl_row(drop=("scene",)), "wrong number of fields: missing scene", "wrong number of fields"),
    ("non-numeric", stl_row(bbox=(0.1, "top", 0.5, 0.8)), "non-numeric coordinate: top='top'", "non-numeric coordinate"),
    ("null", stl_row(bbox=(0.1, 0.2, None, 0.8)), "non-numeric coordinate: right=None", "non-numeric coordinate"),
    ("nan", stl_row(bbox=(0.1, 0.2, "nan", 0.8)), "non-finite coordinate: right='nan'", "non-finite coordinate"),
    (
        "NaN-literal",
        '{"product": "p9", "scene": "s1", "bbox": [NaN, 0.2, 0.5, 0.8]}',
        "non-finite coordinate: left=nan",
        "non-finite coordinate",
    ),
    (
        "Infinity",
        '{"product": "p9", "scene": "s1", "bbox": [0.1, 0.2, 0.5, Infinity]}',
        "non-finite coordinate: bottom=inf",
        "non-finite coordinate",
    ),
    ("outside", stl_row(bbox=(0.5, 0.2, 1.3, 0.8)), "box outside [0,1]: x=0.5, y=0.2, w=0.8, h=0.6", "box outside [0,1]"),
    ("zero-area", stl_row(bbox=(0.5, 0.2, 0.5, 0.8)), "zero-area box: w=0, h=0.6", "zero-area box"),
    ("inverted", stl_row(bbox=(0.1, 0.8, 0.5, 0.2)), "zero-area box: w=0.4, h=-0.6", "zero-area box"),
    ("invalid-json", '{"product": "p9", ', "invalid JSON: Expecting property name enclosed in double quotes", "invalid JSON"),
]


@pytest.mark.parametrize("case, row, problem, reason", STL_BAD, ids=[c[0] for c in STL_BAD])
def test_stl_products_bad_row(tmp_path, case, row, problem, reason):
    path = write(tmp_path / "fashion.json", [stl_row(), stl_row("p2"), row, stl_row("p3")])
    assert raise_message(read_stl_products, path) == f"{path}:3: {problem}"
    result = read_stl_products(path, on_error="skip")
    assert ([p.product for p in result.records], result.skipped) == (["p1", "p2", "p3"], {reason: 1})


def test_stl_products_missing_bbox_key_and_counts(tmp_path):
    rows = [
        stl_row(),
        stl_row("p2", drop=("bbox",)),
        stl_row(bbox=(0.5, 0.2, 1.3, 0.8)),
        stl_row(bbox=(0.1, "top", 0.5, 0.8)),
        stl_row(bbox=(0.5, 0.2, 1.3, 0.8)),
        "[1, 2]",
    ]
    path = write(tmp_path / "fashion.json", rows)
    assert raise_message(read_stl_products, path) == f"{path}:2: wrong number of fields: missing bbox"
    result = read_stl_products(path, on_error="skip")
    assert result.skipped == {"wrong number of fields": 1, "box outside [0,1]": 2, "non-numeric coordinate": 1, "malformed row": 1}
    assert len(result.records) == 1


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_stl_products_empty_and_all_bad(tmp_path, on_error):
    for name, text in [("empty.json", ""), ("blank.json", "\r\n\n")]:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        with pytest.raises(DataFormatError) as caught:
            read_stl_products(path, on_error=on_error)
        assert caught.value.args[0] == f"{path}: file is empty"
    path = write(tmp_path / "allbad.json", [stl_row(bbox=(0.5, 0.2, 0.5, 0.8)), stl_row(bbox=("x", 0, 1, 1))])
    with pytest.raises(DataFormatError) as caught:
        read_stl_products(path, on_error=on_error)
    expected = (
        ":1: zero-area box: w=0, h=0.6" if on_error == "raise" else ": every row was rejected (1 zero-area box, 1 non-numeric coordinate)"
    )
    assert str(caught.value) == f"{path}{expected}"


# --------------------------------------------------------------------------- STL fashion-cat.json


def test_stl_categories_last_component_and_empty_label(tmp_path):
    data = {"p1": "Apparel & Accessories|Shoes", "p2": "Apparel & Accessories|", "p3": "Necklaces", "p4": "", "p5": None}
    path = tmp_path / "fashion-cat.json"
    path.write_text(json.dumps(data, indent=0), encoding="utf-8")  # one product per line, from line 2
    assert raise_message(read_stl_categories, path) == f"{path}:3: product p2: empty label"
    result = read_stl_categories(path, on_error="skip")
    assert result.records == [("p1", "Shoes"), ("p3", "Necklaces")]
    assert result.skipped == {"empty label": 3}
    one_line = tmp_path / "one-line.json"
    one_line.write_text(json.dumps(data), encoding="utf-8")
    assert raise_message(read_stl_categories, one_line) == f"{one_line}:1: product p2: empty label"


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_stl_categories_empty_and_all_bad(tmp_path, on_error):
    for i, (text, problem) in enumerate(
        [("", "file is empty"), ("{}", "file has no products"), ("[]", "expected a JSON object mapping product to category path")]
    ):
        path = tmp_path / f"cat{i}.json"
        path.write_text(text, encoding="utf-8")
        with pytest.raises(DataFormatError) as caught:
            read_stl_categories(path, on_error=on_error)
        assert caught.value.args[0] == f"{path}: {problem}"
    path = tmp_path / "allbad.json"
    path.write_text(json.dumps({"p1": "A|", "p2": ""}), encoding="utf-8")
    with pytest.raises(DataFormatError) as caught:
        read_stl_categories(path, on_error=on_error)
    expected = ":1: product p1: empty label" if on_error == "raise" else ": every product was rejected (2 empty label)"
    assert str(caught.value) == f"{path}{expected}"


# --------------------------------------------------------------------------- encoding


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_text_that_is_not_utf8_is_a_one_line_error(tmp_path, on_error):
    path = tmp_path / "latin1.tsv"
    path.write_bytes((RAW_HEADER + "\n" + GOOD_ROW + "\na1\t0.1\t0.1\t0.2\t0.2\tCaf\xe9\n").encode("latin-1"))
    for reader in (read_ctl_raw, read_ctl_triplets, read_stl_products, read_ctl_fitb, read_stl_categories):
        with pytest.raises(DataFormatError) as caught:
            reader(path, on_error=on_error)
        assert str(caught.value) == f"{path}:3: not UTF-8 text (byte 0xe9 at column 23)", reader.__name__
