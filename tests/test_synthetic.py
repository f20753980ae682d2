"""The toy synthetic world: deterministic, in the real formats, with plausible outfits and planted styles."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ctl_lightning.cli.data import main
from ctl_lightning.data.formats import (
    read_ctl_fitb,
    read_ctl_raw,
    read_stl_categories,
    read_stl_products,
)
from ctl_lightning.data.formats.ctl import group_outfits, product_key
from ctl_lightning.data.synthetic import SynthConfig, generate, is_complete
from ctl_lightning.data.synthetic.styles import CTL_LABELS, STL_CATEGORY_PATHS

ANNOTATIONS = [
    "ctl/raw_train.tsv",
    "ctl/raw_test.tsv",
    "ctl/fitb_test.json",
    "ctl/synthetic_styles.tsv",
    "stl/fashion.json",
    "stl/fashion-cat.json",
    "stl/synthetic_styles.tsv",
]
SMALL = ["--outfits", "60", "--scenes", "10", "--styles", "6", "--world", "toy"]
BOTTOMS = {"Pants", "Skirts", "Shorts"}


def synth(out: Path, seed: int) -> Path:
    main(["synth", "--out", str(out), "--seed", str(seed), *SMALL])
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return synth(tmp_path_factory.mktemp("synth") / "a", seed=7)


@pytest.fixture(scope="module")
def ctl(dataset):
    train = read_ctl_raw(dataset / "ctl" / "raw_train.tsv")
    test = read_ctl_raw(dataset / "ctl" / "raw_test.tsv")
    return train, test


def test_same_seed_gives_byte_identical_annotations(dataset, tmp_path, capsys):
    again = synth(tmp_path / "b", seed=7)
    assert f"synthetic dataset written to {again}" in capsys.readouterr().out
    for name in ANNOTATIONS:
        assert (dataset / name).read_bytes() == (again / name).read_bytes(), name
    # The images are the same too, file for file.
    images = sorted(p.name for p in (dataset / "ctl" / "images").iterdir())
    assert images == sorted(p.name for p in (again / "ctl" / "images").iterdir())
    assert (dataset / "ctl" / "images" / images[0]).read_bytes() == (again / "ctl" / "images" / images[0]).read_bytes()


def test_one_worker_and_several_give_the_same_dataset(dataset, tmp_path):
    out = generate(SynthConfig(out=tmp_path / "one", seed=7, outfits=60, scenes=10, styles=6, workers=1, world="toy"))
    for name in ANNOTATIONS:
        assert (dataset / name).read_bytes() == (out / name).read_bytes(), name


def test_different_seed_differs(dataset, tmp_path):
    other = synth(tmp_path / "c", seed=8)
    for name in ANNOTATIONS:
        assert (dataset / name).read_bytes() != (other / name).read_bytes(), name


def test_files_parse_with_the_real_readers(dataset, ctl):
    train, test = ctl
    assert not train.skipped and not test.skipped
    train_outfits, test_outfits = group_outfits(train.records), group_outfits(test.records)
    assert (len(train_outfits), len(test_outfits)) == (48, 12)  # test_fraction 0.2 of 60
    assert not set(train_outfits) & set(test_outfits)
    # The real files' quirk: a space-separated header over tab-separated rows.
    header = (dataset / "ctl" / "raw_train.tsv").read_text().splitlines()[0]
    assert header.split() == ["image_signature", "bounding_x", "bounding_y", "bounding_width", "bounding_height", "label"]
    assert "\t" not in header
    pairs = read_stl_products(dataset / "stl" / "fashion.json")
    categories = read_stl_categories(dataset / "stl" / "fashion-cat.json")
    assert not pairs.skipped and not categories.skipped
    assert {p.product for p in pairs.records} == {p for p, _ in categories.records}
    assert {c for _, c in categories.records} <= set(STL_CATEGORY_PATHS)
    # fashion-cat.json stores the full taxonomy path; the category is its last part.
    raw_paths = json.loads((dataset / "stl" / "fashion-cat.json").read_text())
    assert all(path == STL_CATEGORY_PATHS[path.split("|")[-1]] for path in raw_paths.values())
    assert len({p.scene for p in pairs.records}) == 10
    manifest = json.loads((dataset / "synthetic.json").read_text())
    assert (manifest["seed"], manifest["outfits"], manifest["test_outfits"], manifest["scenes"]) == (7, 60, 12, 10)


def test_images_exist_on_white_and_boxes_hold_the_items(dataset, ctl):
    train, test = ctl
    items = train.records + test.records
    for signature, rows in list(group_outfits(items).items())[:5]:
        image = np.asarray(Image.open(dataset / "ctl" / "images" / f"{signature}.jpg").convert("RGB"), dtype=np.int32)
        assert image.shape == (320, 320, 3)
        covered = np.zeros(image.shape[:2], bool)
        for item in rows:
            x0, y0 = int(item.x * 320), int(item.y * 320)
            x1, y1 = int((item.x + item.w) * 320), int((item.y + item.h) * 320)
            covered[y0:y1, x0:x1] = True
            # Each box holds a drawn item, not background.
            assert (image[y0:y1, x0:x1].min(axis=2) < 200).mean() > 0.15
        # Outside the boxes the collage is white.
        assert image[~covered].min(axis=1).mean() > 245
    for pair in read_stl_products(dataset / "stl" / "fashion.json").records[:5]:
        assert (dataset / "stl" / "products" / f"{pair.product}.jpg").is_file()
        assert (dataset / "stl" / "scenes" / f"{pair.scene}.jpg").is_file()


def test_outfits_are_plausible(ctl):
    train, test = ctl
    outfits = group_outfits(train.records + test.records)
    sizes = Counter()
    for rows in outfits.values():
        labels = [item.label for item in rows]
        assert len(set(labels)) == len(labels), labels  # distinct categories
        assert 4 <= len(labels) <= 8, labels
        has_top_and_bottom = "Shirts & Tops" in labels and len(BOTTOMS & set(labels)) == 1
        assert has_top_and_bottom != ("Dresses" in labels), labels  # a top with a bottom, or a dress
        assert "Shoes" in labels
        sizes[len(labels)] += 1
    assert len(sizes) >= 3  # sizes vary


def test_all_ctl_labels_occur(ctl):
    train, test = ctl
    assert {item.label for item in train.records + test.records} == set(CTL_LABELS)
    assert len(CTL_LABELS) == 13


def test_fitb_questions(dataset, ctl):
    _, test = ctl
    test_outfits = group_outfits(test.records)
    questions = read_ctl_fitb(dataset / "ctl" / "fitb_test.json").records
    assert 0 < len(questions) <= len(test_outfits)
    for q in questions:
        assert len(q.answers) == 4
        right, wrong = q.answers[0], q.answers[1:]
        outfit = test_outfits[right.signature]
        # The right answer is the blanked item of the question's outfit; the question is the rest.
        assert {i.key for i in q.question} | {right.key} == {i.key for i in outfit}
        assert right.key not in {i.key for i in q.question}
        # Candidates share the blank's category and come from other (test) outfits.
        assert {a.label for a in q.answers} == {right.label}
        assert all(a.signature != right.signature and a.signature in test_outfits for a in wrong)
        assert len({a.key for a in wrong}) == 3


def test_styles_are_recorded(dataset, ctl):
    train, test = ctl
    lines = (dataset / "ctl" / "synthetic_styles.tsv").read_text().splitlines()
    assert lines[0] == "product_key\tstyle"
    styles = dict(line.split("\t") for line in lines[1:])
    items = train.records + test.records
    assert set(styles) == {item.key for item in items}
    assert {int(s) for s in styles.values()} <= set(range(6))
    assert len(set(styles.values())) >= 4
    for rows in group_outfits(items).values():  # one latent style per outfit
        assert len({styles[i.key] for i in rows}) == 1
    assert product_key(items[0].signature, (items[0].x, items[0].y, items[0].w, items[0].h)) in styles
    stl_lines = (dataset / "stl" / "synthetic_styles.tsv").read_text().splitlines()
    assert stl_lines[0] == "product\tstyle"
    products = {p.product for p in read_stl_products(dataset / "stl" / "fashion.json").records}
    assert {line.split("\t")[0] for line in stl_lines[1:]} == products


def test_is_complete_checks_version_and_settings(dataset):
    assert is_complete(dataset)
    assert is_complete(dataset, SynthConfig(out=dataset, seed=7, outfits=60, scenes=10, styles=6, world="toy"))
    assert not is_complete(dataset, SynthConfig(out=dataset, seed=7, outfits=60, scenes=300, styles=6, world="toy"))
    assert not is_complete(dataset, SynthConfig(out=dataset, seed=7, outfits=60, scenes=10, styles=6))  # the bench world
    assert not is_complete(dataset / "ctl")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--outfits", "5"], "--outfits must be at least 10, got 5"),
        (["--styles", "1"], "--styles must be at least 2, got 1"),
        (["--scenes", "0"], "--scenes must be at least 1, got 0"),
    ],
)
def test_synth_bad_arguments_are_one_line_errors(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as caught:
        main(["synth", "--out", str(tmp_path / "x"), *args])
    assert caught.value.code == 2
    assert capsys.readouterr().err == f"ctl-data: error: {message}\n"
    assert not (tmp_path / "x").exists()
