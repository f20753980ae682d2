"""``ctl-data prepare``: builds (or reuses) the product store of a CTL or STL folder and says what it kept."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from ctl_lightning.cli.data import main
from ctl_lightning.data.formats import read_ctl_raw


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "synth"
    main(["synth", "--out", str(out), "--seed", "2", "--outfits", "20", "--scenes", "4", "--styles", "4"])
    return out


@pytest.fixture
def ctl_folder(synthetic, tmp_path) -> Path:
    folder = tmp_path / "ctl"
    shutil.copytree(synthetic / "ctl", folder)
    return folder


def n_products(folder: Path) -> int:
    return sum(len(read_ctl_raw(folder / name).records) for name in ("raw_train.tsv", "raw_test.tsv"))


def summary(out: str) -> re.Match:
    match = re.search(r"^product store (\S+): (\d+) products, (\d+) px, fingerprint ([0-9a-f]{20})$", out, re.M)
    assert match, out
    return match


def test_prepare_ctl_folder(ctl_folder, capsys):
    main(["prepare", str(ctl_folder), "--size", "16", "--workers", "1"])
    out = capsys.readouterr().out
    store, count, size, fingerprint = summary(out).groups()
    assert Path(store) == ctl_folder / "store" / "ctl-16px"
    assert (int(count), size) == (n_products(ctl_folder), "16")
    assert json.loads((Path(store) / "manifest.json").read_text())["fingerprint"] == fingerprint
    assert "skipped" not in out and "excluded" not in out
    # Again: the same store, reused.
    main(["prepare", str(ctl_folder), "--size", "16"])
    assert summary(capsys.readouterr().out).group(4) == fingerprint


def test_prepare_stl_folder(synthetic, tmp_path, capsys):
    main(["prepare", str(synthetic / "stl"), "--size", "16", "--store-dir", str(tmp_path / "stores")])
    store, count, _size, _ = summary(capsys.readouterr().out).groups()
    assert Path(store) == tmp_path / "stores" / "stl-16px"
    assert int(count) == len(json.loads((synthetic / "stl" / "fashion-cat.json").read_text()))


def test_prepare_with_only_a_test_file(ctl_folder, capsys):
    (ctl_folder / "raw_train.tsv").unlink()
    main(["prepare", str(ctl_folder), "--size", "16", "--workers", "1"])
    assert int(summary(capsys.readouterr().out).group(2)) == len(read_ctl_raw(ctl_folder / "raw_test.tsv").records)


def add_bad_rows(folder: Path) -> Path:
    path = folder / "raw_train.tsv"
    lines = path.read_text().splitlines(keepends=True)
    bad = [
        "bad1\t0.1\tnan\t0.2\t0.2\tShoes\n",
        "bad2\t0.1\t0.1\t0.2\t0.2\t\n",
        "bad3\t0.9\t0.1\t0.2\t0.2\tHats\n",
        "bad4\t0.1\t0.1\t0.2\tShoes\n",
        "bad5\t0.1\t0.1\t0.2\t0.2\t\n",
    ]
    path.write_text("".join([*lines[:3], *bad, *lines[3:]]))
    return path


def test_prepare_bad_row_stops_with_one_line(ctl_folder, capsys):
    path = add_bad_rows(ctl_folder)
    with pytest.raises(SystemExit) as caught:
        main(["prepare", str(ctl_folder), "--size", "16"])
    assert caught.value.code == 2
    assert capsys.readouterr().err == f"ctl-data: error: {path}:4: non-finite coordinate: y='nan'\n"
    assert not (ctl_folder / "store" / "ctl-16px").exists()


def test_prepare_on_error_skip_reports_the_counts(ctl_folder, capsys):
    expected = n_products(ctl_folder)
    path = add_bad_rows(ctl_folder)
    main(["prepare", str(ctl_folder), "--size", "16", "--on-error", "skip", "--workers", "1"])
    out = capsys.readouterr().out
    assert int(summary(out).group(2)) == expected
    assert (
        f"skipped annotation rows in {path}: 2 empty label, 1 non-finite coordinate, 1 box outside [0,1], 1 wrong number of fields"
        in out.splitlines()
    )


def test_prepare_skip_counts_reported_when_the_store_already_exists(ctl_folder, capsys):
    main(["prepare", str(ctl_folder), "--size", "16", "--workers", "1"])
    fingerprint = summary(capsys.readouterr().out).group(4)
    path = add_bad_rows(ctl_folder)
    main(["prepare", str(ctl_folder), "--size", "16", "--on-error", "skip"])
    out = capsys.readouterr().out
    assert summary(out).group(4) == fingerprint  # same products: the crops are reused
    assert (
        f"skipped annotation rows in {path}: 2 empty label, 1 non-finite coordinate, 1 box outside [0,1], 1 wrong number of fields"
        in out.splitlines()
    )


def test_prepare_lists_unreadable_images(ctl_folder, capsys):
    items = read_ctl_raw(ctl_folder / "raw_train.tsv").records
    signature = items[0].signature
    image = ctl_folder / "images" / f"{signature}.jpg"
    image.unlink()
    main(["prepare", str(ctl_folder), "--size", "16", "--workers", "1"])
    out = capsys.readouterr().out
    affected = sum(item.signature == signature for item in items)
    assert int(summary(out).group(2)) == n_products(ctl_folder) - affected
    lines = out.splitlines()
    assert f"excluded {affected} products from 1 unreadable images:" in lines
    assert f"  {image}: missing image" in lines


def test_prepare_unknown_folder_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as caught:
        main(["prepare", str(tmp_path)])
    assert caught.value.code == 2
    assert capsys.readouterr().err == (
        f"ctl-data: error: {tmp_path}: neither raw_train.tsv/raw_test.tsv (CTL) nor fashion.json (STL) found; pass --kind\n"
    )
