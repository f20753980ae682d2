"""The benchmark world: deterministic, leak-free splits, category-pair relations, and its gates
(oracle ceiling high, identity shortcuts low), computed from the annotations alone."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from ctl_lightning.data.formats import read_ctl_raw
from ctl_lightning.data.formats.ctl import group_outfits
from ctl_lightning.data.sources import SyntheticCtl
from ctl_lightning.data.synthetic import SynthConfig, generate
from ctl_lightning.data.synthetic import world as W
from ctl_lightning.data.synthetic.benchmark import ATTRIBUTES_FILE, read_attributes
from ctl_lightning.errors import CtlError
from ctl_lightning.evaluation import ceilings

ANNOTATIONS = ["ctl/raw_train.tsv", "ctl/raw_test.tsv", "ctl/fitb_test.json", "ctl/synthetic_styles.tsv", f"ctl/{ATTRIBUTES_FILE}"]


def annotations_only(out: Path, outfits: int = 5000, seed: int = 0, split: str = "nondisjoint") -> SyntheticCtl:
    """A benchmark-world source whose annotations are written without drawing any image."""
    source = SyntheticCtl(out, seed=seed, outfits=outfits, split=split)
    source.synth = SynthConfig(out=source.synth.out, seed=seed, outfits=outfits, split=split, render=False)
    source.ensure()
    return source


@pytest.fixture(scope="module")
def default_world(tmp_path_factory) -> dict[str, SyntheticCtl]:
    """The default size (5,000 outfits, seed 0), both splits, annotations only."""
    root = tmp_path_factory.mktemp("bench")
    return {split: annotations_only(root, split=split) for split in ("nondisjoint", "disjoint")}


def test_gates_from_the_annotations(default_world):
    """The task is learnable (oracle) and no single-attribute identity rule solves it."""
    source = default_world["nondisjoint"]
    sets = ceilings.annotation_sets(source, seed=0)
    items = ceilings.latent_items(sets.table, source.root)
    oracle = ceilings.oracle_scores(sets.table.categories, items, sets)
    assert oracle["triplet_accuracy"] >= 0.92 and oracle["compatibility_auc"] >= 0.95
    assert oracle["fitb_accuracy"] >= 0.9
    rules = ceilings.identity_rule_scores(items, len(sets.table), sets)
    assert set(rules) == set(ceilings.IDENTITY_RULES)
    for name, scores in rules.items():
        assert 0.4 <= scores["triplet_accuracy"] <= 0.65, (name, scores)
    # Test looks unseen in training leave the ceiling where it was: the rules are the same.
    source = default_world["disjoint"]
    sets = ceilings.annotation_sets(source, seed=0)
    assert ceilings.oracle_metrics(sets, source.root)["triplet_accuracy"] >= 0.92


def test_the_oracle_can_fail(default_world):
    """The oracle's score comes from the attributes: shuffled within each category, it is chance."""
    source = default_world["nondisjoint"]
    sets = ceilings.annotation_sets(source, seed=0)
    items = ceilings.latent_items(sets.table, source.root)
    rng = np.random.default_rng(0)
    shuffled = {}
    for category in np.unique(sets.table.categories[list(items)]):
        rows = [r for r in items if sets.table.categories[r] == category]
        shuffled.update(zip(rows, [items[r] for r in rng.permutation(rows)]))
    assert abs(ceilings.oracle_scores(sets.table.categories, shuffled, sets)["triplet_accuracy"] - 0.5) < 0.06


def test_a_relation_holds_for_one_category_pair_and_fails_for_another(default_world):
    """Shoes share the bag's hue in every look; a coat shares the top's hue only in some schemes."""
    truth = read_attributes(default_world["nondisjoint"].root / ATTRIBUTES_FILE)
    outfits: dict[str, dict[str, W.Item]] = defaultdict(dict)
    for key, attributes in truth.items():
        if not attributes.off_look:
            outfits[key.split("@")[0]][attributes.category] = attributes.item

    def same_hue_share(a: str, b: str) -> float:
        pairs = [(o[a], o[b]) for o in outfits.values() if a in o and b in o]
        return float(np.mean([abs((x.hue - y.hue + 180) % 360 - 180) < 30 for x, y in pairs]))

    assert same_hue_share("Shoes", "Handbags") > 0.95
    assert same_hue_share("Shirts & Tops", "Coats & Jackets") < 0.5


def test_splits_and_label_noise(default_world):
    for split, source in default_world.items():
        truth = read_attributes(source.root / ATTRIBUTES_FILE)
        test_keys = {item.key for item in read_ctl_raw(source.root / "raw_test.tsv").records}
        train_keys = {item.key for item in read_ctl_raw(source.root / "raw_train.tsv").records}
        assert set(truth) == test_keys | train_keys
        # Off-look items (label noise) in training outfits only, about one in ten.
        assert not any(truth[k].off_look for k in test_keys)
        assert 0.08 < np.mean([truth[k].off_look for k in train_keys]) < 0.12
        combos = {
            split_keys: {(truth[k].look.hue, truth[k].look.scheme) for k in keys}
            for split_keys, keys in (("train", train_keys), ("test", test_keys))
        }
        if split == "disjoint":
            assert not combos["train"] & combos["test"]
            assert {h for h, _ in combos["test"]} <= {h for h, _ in combos["train"]}  # every hue is seen...
            assert {s for _, s in combos["test"]} <= {s for _, s in combos["train"]}  # ...and every scheme
        else:
            assert combos["test"] <= combos["train"]


def test_drawing_changes_no_annotation_and_the_seed_repeats(tmp_path):
    drawn = generate(SynthConfig(out=tmp_path / "drawn", seed=5, outfits=30, scenes=3))
    plain = generate(SynthConfig(out=tmp_path / "plain", seed=5, outfits=30, scenes=3, render=False))
    again = generate(SynthConfig(out=tmp_path / "again", seed=5, outfits=30, scenes=3))
    for name in ANNOTATIONS:
        assert (drawn / name).read_bytes() == (plain / name).read_bytes() == (again / name).read_bytes(), name
    assert not any((plain / "ctl" / "images").iterdir())
    images = sorted(p.name for p in (drawn / "ctl" / "images").iterdir())
    assert images == sorted(p.name for p in (again / "ctl" / "images").iterdir())
    assert (drawn / "ctl" / "images" / images[0]).read_bytes() == (again / "ctl" / "images" / images[0]).read_bytes()
    assert len(images) == len(group_outfits(read_ctl_raw(drawn / "ctl" / "raw_train.tsv").records)) + 6
    assert (drawn / "stl" / "fashion.json").is_file()


def test_backdrops_are_per_item_not_per_outfit(tmp_path):
    """A tint shared by a collage would let a colour histogram match outfits: the canvas is white."""
    from PIL import Image

    out = generate(SynthConfig(out=tmp_path / "w", seed=1, outfits=12, scenes=1))
    records = read_ctl_raw(out / "ctl" / "raw_train.tsv").records
    for signature, rows in list(group_outfits(records).items())[:4]:
        image = np.asarray(Image.open(out / "ctl" / "images" / f"{signature}.jpg").convert("RGB"), dtype=np.int32)
        covered = np.zeros(image.shape[:2], bool)
        for item in rows:
            covered[int(item.y * 320) : int((item.y + item.h) * 320) + 1, int(item.x * 320) : int((item.x + item.w) * 320) + 1] = True
        assert image[~covered].min(axis=1).mean() > 245


def test_bad_split_is_a_one_line_error(tmp_path):
    with pytest.raises(CtlError, match="split must be nondisjoint or disjoint, got 'both'"):
        generate(SynthConfig(out=tmp_path / "x", outfits=20, split="both"))
    assert not (tmp_path / "x").exists()
