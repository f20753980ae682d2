"""``ctl-data stats``: per-category tables of any annotation file (the paper's Tables 1 and 2)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers import shared_file
from test_formats import (
    CTL_TEST_LABELS,
    GOOD_TRIPLET,
    RAW_HEADER,
    STL_TABLE_1,
    fitb_question,
    stl_row,
    write_fitb,
)

from ctl_lightning.cli.data import main
from ctl_lightning.data.formats.stats import detect_kind, file_stats
from ctl_lightning.errors import DataFormatError


def table_counts(output: str) -> dict[str, int]:
    """``category -> count`` from the rich table printed by ``ctl-data stats``."""
    counts = {}
    for line in output.splitlines():
        match = re.match(r"^\W*([A-Za-z][\w ,&()-]*?)\s+\W\s+([\d,]+)\s+\W\s+[\d.]+%", line)
        if match:
            counts[match.group(1)] = int(match.group(2).replace(",", ""))
    return counts


@pytest.fixture
def small_files(tmp_path) -> dict[str, Path]:
    """One small file of each of the five kinds."""
    raw = tmp_path / "raw.tsv"
    raw.write_text(
        RAW_HEADER
        + "\n"
        + "".join(f"o{i % 3}\t0.1\t0.1\t0.2\t0.2\t{label}\n" for i, label in enumerate(["Shoes", "Pants", "Shoes", "Hats", "Shoes"]))
    )
    triplets = tmp_path / "triplets.tsv"
    triplets.write_text(GOOD_TRIPLET + "\n" + GOOD_TRIPLET.replace("Pants", "Skirts") + "\n" + GOOD_TRIPLET + "\n")
    fitb = write_fitb(tmp_path / "fitb.json", [fitb_question(), fitb_question()])
    stl = tmp_path / "stl"
    stl.mkdir()
    products = stl / "fashion.json"
    products.write_text("".join(stl_row(p, s) + "\n" for p, s in [("p1", "s1"), ("p2", "s1"), ("p1", "s2"), ("p3", "s2")]))
    categories = stl / "fashion-cat.json"
    categories.write_text(json.dumps({"p1": "A|Shoes", "p2": "A|Clothing|Pants", "p3": "A|Shoes"}))
    return {"ctl-raw": raw, "ctl-triplets": triplets, "ctl-fitb": fitb, "stl-products": products, "stl-categories": categories}


def test_file_stats_real_stl_table_1():
    stats = file_stats(shared_file("stl", "fashion-cat.json"))
    assert stats.kind == "stl-categories"
    assert dict(stats.counts) == STL_TABLE_1
    assert stats.totals == {"products": 38_111, "categories": 10}
    assert stats.skipped == ""


def test_file_stats_real_ctl_labels():
    stats = file_stats(shared_file("ctl", "raw_test.tsv"))
    assert stats.kind == "ctl-raw"
    assert dict(stats.counts) == CTL_TEST_LABELS
    assert stats.totals == {"products": 25_140, "outfits": 5_028, "labels": 13}


def test_cli_stats_prints_table_1(capsys):
    path = shared_file("stl", "fashion-cat.json")
    main(["stats", str(path)])
    out = capsys.readouterr().out
    assert table_counts(out) == {**STL_TABLE_1, "Total": 38_111}
    assert "products: 38,111, categories: 10" in out
    # Sorted by count, as in the paper.
    assert list(table_counts(out))[:3] == ["Shoes", "Shirts & Tops", "Pants"]


def test_cli_stats_prints_ctl_labels(capsys):
    main(["stats", str(shared_file("ctl", "raw_test.tsv"))])
    out = capsys.readouterr().out
    assert table_counts(out) == {**CTL_TEST_LABELS, "Total": 25_140}
    assert "products: 25,140, outfits: 5,028, labels: 13" in out


def test_detect_kind_of_each_format(small_files, tmp_path):
    for kind, path in small_files.items():
        assert detect_kind(path) == kind, kind
    # Detection survives a BOM, CRLF endings, a tab-separated header and indented JSON.
    bom = tmp_path / "bom.tsv"
    bom.write_bytes(b"\xef\xbb\xbf" + small_files["ctl-raw"].read_bytes().replace(b"\n", b"\r\n"))
    assert detect_kind(bom) == "ctl-raw"
    tabbed = tmp_path / "tabbed.tsv"
    tabbed.write_text("image_signature\tx\ty\tw\th\tlabel\n" + small_files["ctl-raw"].read_text().split("\n", 1)[1])
    assert detect_kind(tabbed) == "ctl-raw"
    header = "\t".join(["image_signature"] + [f"c{i}" for i in range(17)])
    triplets = tmp_path / "triplets-header.tsv"
    triplets.write_text(header + "\n" + GOOD_TRIPLET + "\n")
    assert detect_kind(triplets) == "ctl-triplets"
    indented = tmp_path / "fitb-indented.json"
    indented.write_text(json.dumps([fitb_question()], indent=2))
    assert detect_kind(indented) == "ctl-fitb"
    cat_indented = tmp_path / "cat-indented.json"
    cat_indented.write_text(json.dumps({"p1": "A|Shoes"}, indent=0))
    assert detect_kind(cat_indented) == "stl-categories"


def test_detect_kind_errors(tmp_path):
    empty = tmp_path / "empty.tsv"
    empty.write_text("\n\n")
    with pytest.raises(DataFormatError) as caught:
        detect_kind(empty)
    assert str(caught.value) == f"{empty}: file is empty"
    odd = tmp_path / "odd.tsv"
    odd.write_text("a\tb\tc\n")
    with pytest.raises(DataFormatError) as caught:
        detect_kind(odd)
    assert str(caught.value) == f"{odd}:1: cannot tell the format: 3 tab-separated fields is neither CTL raw (6) nor triplets (18)"


def test_file_stats_of_each_small_file(small_files):
    raw = file_stats(small_files["ctl-raw"])
    assert (dict(raw.counts), raw.totals) == ({"Shoes": 3, "Pants": 1, "Hats": 1}, {"products": 5, "outfits": 3, "labels": 3})
    triplets = file_stats(small_files["ctl-triplets"])
    assert (dict(triplets.counts), triplets.totals) == ({"Pants": 2, "Skirts": 1}, {"triplets": 3, "labels": 2})
    fitb = file_stats(small_files["ctl-fitb"])
    assert (dict(fitb.counts), fitb.totals) == ({"Pants": 2}, {"questions": 2, "labels": 1})
    products = file_stats(small_files["stl-products"])  # categories come from the sibling fashion-cat.json
    assert (dict(products.counts), products.totals) == ({"Shoes": 2, "Pants": 1}, {"pairs": 4, "products": 3, "scenes": 2})
    categories = file_stats(small_files["stl-categories"])
    assert (dict(categories.counts), categories.totals) == ({"Shoes": 2, "Pants": 1}, {"products": 3, "categories": 2})


def test_file_stats_skip_reports_counts(tmp_path, capsys):
    path = tmp_path / "raw.tsv"
    path.write_text(RAW_HEADER + "\no1\t0.1\t0.1\t0.2\t0.2\tShoes\no1\t0.1\tnan\t0.2\t0.2\tPants\no2\t0.1\t0.1\t0.2\t0.2\t\n")
    stats = file_stats(path, on_error="skip")
    assert dict(stats.counts) == {"Shoes": 1}
    assert stats.skipped == f"{path}: skipped 2 rows (1 non-finite coordinate, 1 empty label)"
    main(["stats", str(path), "--on-error", "skip"])
    out = capsys.readouterr().out
    assert table_counts(out) == {"Shoes": 1, "Total": 1}
    assert f"{path}: skipped 2 rows (1 non-finite coordinate, 1 empty label)" in out.splitlines()


@pytest.mark.parametrize(
    "name, text, message",
    [
        (
            "bad.tsv",
            RAW_HEADER + "\no1\t0.1\t0.1\t0.2\t0.2\tShoes\no1\t0.1\tinf\t0.2\t0.2\tPants\n",
            "{path}:3: non-finite coordinate: y='inf'",
        ),
        ("empty.tsv", "", "{path}: file is empty"),
        ("header.tsv", RAW_HEADER + "\n", "{path}: file has a header but no data rows"),
        ("cat.json", '{"p1": "A|Shoes", "p2": "A|"}', "{path}:1: product p2: empty label"),
        ("broken.json", '{"p1": "A|Shoes",', "{path}:1: invalid JSON: Expecting property name enclosed in double quotes"),
    ],
)
def test_cli_stats_bad_file_exits_2_with_one_line(tmp_path, capsys, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(SystemExit) as caught:
        main(["stats", str(path)])
    assert caught.value.code == 2
    captured = capsys.readouterr()
    assert captured.err == f"ctl-data: error: {message.format(path=path)}\n"
    assert "Traceback" not in captured.out + captured.err


def test_cli_stats_of_an_image_is_a_one_line_error(capsys):
    image = shared_file("ctl", "example.png")
    with pytest.raises(SystemExit) as caught:
        main(["stats", str(image)])
    assert caught.value.code == 2
    assert capsys.readouterr().err == f"ctl-data: error: {image}:1: not UTF-8 text (byte 0x89 at column 1)\n"


def test_cli_stats_missing_file(tmp_path, capsys):
    with pytest.raises(SystemExit) as caught:
        main(["stats", str(tmp_path / "nope.tsv")])
    assert caught.value.code == 2
    assert capsys.readouterr().err == f"ctl-data: error: {tmp_path / 'nope.tsv'}: file not found\n"
