"""Polyvore Outfits: the reader's bad inputs, the standard protocol on a hand-checked example, the
synthetic folder's round trip, ``ctl-data stats`` and one tiny training run."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import train_in_process
from PIL import Image

from ctl_lightning.cli.data import main
from ctl_lightning.data.datamodules import TripletsDataModule
from ctl_lightning.data.formats.polyvore import METADATA_FILE, read_polyvore_split
from ctl_lightning.data.sources import PolyvoreSource, SyntheticPolyvore
from ctl_lightning.data.synthetic import SynthConfig, generate
from ctl_lightning.errors import CtlError, DataFormatError
from ctl_lightning.evaluation import metrics
from ctl_lightning.evaluation.ceilings import annotation_sets

# Every item of the hand-made folder: (set_id, index, item_id, category, angle in degrees of its 2-d
# embedding). Item "t0" is listed in a training and a test outfit, as real nondisjoint items can be.
ITEMS = [
    ("s1", 1, "t0", "top", 0),
    ("s1", 2, "h1", "shoe", 0),
    ("s1", 3, "b1", "bag", 180),
    ("s2", 1, "t2", "top", 0),
    ("s2", 2, "h2", "shoe", 90),
    ("s2", 3, "b2", "bag", 180),
    ("s3", 1, "t3", "top", 90),
    ("s3", 4, "h3", "shoe", 90),  # indexes may skip
    ("s4", 1, "t4", "top", 0),
    ("s4", 2, "h4", "shoe", 90),
    ("s4", 3, "b4", "bag", 0),
    ("s5", 1, "t5", "top", 45),
    ("s5", 2, "h5", "shoe", 180),
    ("s5", 3, "b5", "bag", 225),
    ("r1", 1, "t0", "top", 0),
    ("r1", 2, "h6", "shoe", 0),
    ("r2", 1, "t7", "top", 0),
    ("r2", 2, "h7", "shoe", 0),
    ("v1", 1, "t8", "top", 0),
    ("v1", 2, "h8", "shoe", 0),
    ("v2", 1, "t9", "top", 0),
    ("v2", 2, "h9", "shoe", 0),
]
PARTS = {"train": ["r1", "r2"], "valid": ["v1", "v2"], "test": ["s1", "s2", "s3", "s4", "s5"]}
COMPATIBILITY = ["1 s1_1 s1_2 s1_3", "1 s3_1 s3_4", "0 s1_1 s3_4 s2_3", "0 s2_2 s1_1"]
FITB = [
    {"question": ["s4_1", "s4_2"], "answers": ["s5_1", "s4_3", "s5_2", "s5_3"], "blank_position": 3},
    {"question": ["s3_1"], "answers": ["s3_4", "s5_2", "s2_1", "s5_3"], "blank_position": 4},
]


def json_lines(entries: list | dict) -> str:
    """A JSON list (or object) with entry ``i`` on line ``i + 2``."""
    if isinstance(entries, dict):
        return "{\n" + ",\n".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in entries.items()) + "\n}\n"
    return "[\n" + ",\n".join(json.dumps(entry) for entry in entries) + "\n]\n"


def write_folder(root: Path, images: bool = False) -> Path:
    """The hand-made folder (nondisjoint split only), with 8-pixel images when asked."""
    (root / "nondisjoint").mkdir(parents=True)
    metadata = {item_id: {"semantic_category": category} for _, _, item_id, category, _ in ITEMS}
    (root / METADATA_FILE).write_text(json_lines(metadata))
    for part, set_ids in PARTS.items():
        outfits = [{"set_id": s, "items": [{"item_id": i, "index": k} for s2, k, i, *_ in ITEMS if s2 == s]} for s in set_ids]
        (root / "nondisjoint" / f"{part}.json").write_text(json_lines(outfits))
    (root / "nondisjoint" / "compatibility_test.txt").write_text("\n".join(COMPATIBILITY) + "\n")
    (root / "nondisjoint" / "fill_in_blank_test.json").write_text(json_lines(FITB))
    if images:
        (root / "images").mkdir()
        for n, item_id in enumerate(metadata):
            Image.new("RGB", (8, 8), (20 * n, 100, 200)).save(root / "images" / f"{item_id}.jpg")
    return root


def replace_line(path: Path, line: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[line - 1] = text
    path.write_text("\n".join(lines) + "\n")


def bad_outfit(items: list) -> str:
    return json.dumps({"set_id": "r2", "items": items})  # the file's last outfit


# (file, line to replace, its new text, expected problem, skip reason); a JSON entry's line is where it starts
BAD_INPUTS = [
    (
        "unknown-item-id",
        "nondisjoint/train.json",
        3,
        bad_outfit([{"item_id": "nope", "index": 1}]),
        "outfit 1: unknown item id: set_id r2: item_id 'nope' is not in polyvore_item_metadata.json",
        "unknown item id",
    ),
    ("empty-outfit", "nondisjoint/train.json", 3, bad_outfit([]), "outfit 1: empty outfit: set_id r2 has no items", "empty outfit"),
    (
        "bad-index",
        "nondisjoint/train.json",
        3,
        bad_outfit([{"item_id": "t7", "index": "x"}]),
        "outfit 1: malformed item: set_id r2: index 'x' is not a whole number",
        "malformed item",
    ),
    (
        "malformed-token",
        "nondisjoint/compatibility_test.txt",
        2,
        "1 s3_1 s3-4",
        "malformed token: 's3-4' in 'outfit' is not <set_id>_<index>",
        "malformed token",
    ),
    (
        "unknown-token",
        "nondisjoint/compatibility_test.txt",
        2,
        "1 s3_1 s3_9",
        "unknown item: s3_9 in 'outfit' names no item of the split's outfits",
        "unknown item",
    ),
    (
        "training-item-token",
        "nondisjoint/compatibility_test.txt",
        2,
        "1 s3_1 r1_1",
        "unknown item: r1_1 in 'outfit' names no item of the split's outfits",
        "unknown item",
    ),
    (
        "bad-label",
        "nondisjoint/compatibility_test.txt",
        2,
        "yes s3_1 s3_4",
        "malformed label: expected 0 or 1, got 'yes'",
        "malformed label",
    ),
    (
        "answer-names-missing-item",
        "nondisjoint/fill_in_blank_test.json",
        3,
        json.dumps({**FITB[1], "answers": ["s3_4", "s5_9", "s2_1", "s5_3"]}),
        "question 1: unknown item: s5_9 in 'answers' names no item of the split's outfits",
        "unknown item",
    ),
    (
        "no-right-answer",
        "nondisjoint/fill_in_blank_test.json",
        3,
        json.dumps({**FITB[1], "answers": ["s5_1", "s5_2", "s2_1", "s5_3"]}),
        "question 1: no single right answer: 0 answers come from the question's outfit s3",
        "no single right answer",
    ),
    (
        "missing-key",
        "nondisjoint/fill_in_blank_test.json",
        3,
        json.dumps({"question": ["s3_1"], "answers": ["s3_4"]}),
        "question 1: malformed question: expected keys 'question', 'answers' and 'blank_position'",
        "malformed question",
    ),
]


@pytest.mark.parametrize("case, name, line, text, problem, reason", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_file_line_or_a_counted_skip(tmp_path, case, name, line, text, problem, reason):
    root = write_folder(tmp_path / "polyvore_outfits")
    replace_line(root / name, line, text)
    with pytest.raises(DataFormatError) as error:
        read_polyvore_split(root, "nondisjoint")
    assert str(error.value) == f"{root / name}:{line}: {problem}"
    skipped = read_polyvore_split(root, "nondisjoint", on_error="skip")
    summaries = [r.skip_summary() for r in skipped.results if r.skipped]
    assert summaries == [f"{root / name}: skipped 1 rows (1 {reason})"]


def test_metadata_without_category_and_whole_file_problems(tmp_path):
    root = write_folder(tmp_path / "polyvore_outfits")
    metadata = json.loads((root / METADATA_FILE).read_text())
    (root / METADATA_FILE).write_text(json_lines({**metadata, "h9": {"title": "no category"}}))
    with pytest.raises(DataFormatError, match=re.escape(f"{root / METADATA_FILE}:{len(metadata) + 1}: item h9: empty label")):
        read_polyvore_split(root, "nondisjoint")
    # skipped there, so valid.json's outfit that names it is rejected in turn: both counted
    counts = {r.path.name: dict(r.skipped) for r in read_polyvore_split(root, "nondisjoint", "skip").results if r.skipped}
    assert counts == {METADATA_FILE: {"empty label": 1}, "valid.json": {"unknown item id": 1}}
    (root / "nondisjoint" / "compatibility_test.txt").write_text("1 s1_1 s1_2\n")
    with pytest.raises(DataFormatError, match="needs outfits of both labels"):
        read_polyvore_split(root, "nondisjoint", "skip")
    (root / "nondisjoint" / "test.json").write_text("{}")
    with pytest.raises(DataFormatError, match=r"test.json: expected a JSON list of outfits"):
        read_polyvore_split(root, "nondisjoint", "skip")
    with pytest.raises(CtlError, match="split must be one of nondisjoint, disjoint"):
        PolyvoreSource(root, split="both")


def test_standard_protocol_on_a_hand_checked_example(tmp_path):
    """Unit embeddings at the angles of ITEMS: two unit vectors ``d`` degrees apart are 2 sin(d/2) apart.

    Compatibility, mean pair distance (cosine) of each outfit of the file:
      1 s1 (0, 0, 180):   (0 + 2 + 2) / 3 = 1.333        (1 - 1 - 1) / 3 = -0.333
      1 s3 (90, 90):      0                               1
      0 (0, 90, 180):     (1.414 + 2 + 1.414) / 3 = 1.609 (0 - 1 + 0) / 3 = -0.333
      0 (90, 0):          1.414                           0
    By distance both real outfits beat both fakes: AUC 1. By cosine s1 ties the first fake and loses
    to the second: AUC (0.5 + 0 + 1 + 1) / 4 = 0.625.
    FITB, summed distance (cosine) of each answer to the question's items:
      q1 items at (0, 90); answers 45: 1.531 (1.414), right 0: 1.414 (1), 180: 3.414 (-1), 225: 3.696 (-1.414)
      q2 item at 90;     answers right 90: 0 (1), 180: 1.414 (0), 0: 1.414 (0), 225: 1.848 (-0.707)
    The smallest summed distance is right in both (accuracy 1); the highest cosine only in q2 (0.5).
    """
    source = PolyvoreSource(write_folder(tmp_path / "polyvore_outfits"))
    sets = annotation_sets(source, seed=0)
    assert sets.pair_measure == "distance"
    angle = {f"{s}_{k}": math.radians(a) for s, k, _, _, a in ITEMS}
    emb = torch.tensor([[math.cos(angle[key]), math.sin(angle[key])] for key in sets.table.keys], dtype=torch.float32)
    rows = torch.arange(len(emb))
    scores = metrics.score_held_out(emb, emb, rows, sets)
    assert scores["compatibility_auc"] == 1.0 and scores["fitb_accuracy"] == 1.0
    assert 0 <= scores["triplet_accuracy"] <= 1 and len(sets.triplets) == 5  # one per test outfit, as for CTL
    position = metrics.position_lookup(rows, len(emb))
    assert metrics.compatibility_auc(emb, position, sets.outfits, sets.fake_outfits, "cosine") == 0.625
    assert metrics.fitb_accuracy(emb, position, sets.fitb.questions, sets.fitb.answers, "cosine") == 0.5
    key = sets.table.keys
    assert [list(key[a]) for a in sets.fitb.answers] == [["s4_3", "s5_1", "s5_2", "s5_3"], ["s3_4", "s5_2", "s2_1", "s5_3"]]


def test_datamodule_validates_on_valid_json_and_lists_each_picture_once(tmp_path):
    source = PolyvoreSource(write_folder(tmp_path / "polyvore_outfits", images=True))
    datamodule = TripletsDataModule(source, image_size=8, triplets_per_outfit=2)
    datamodule.setup()
    table = datamodule.store.table
    assert datamodule.num_classes == 2 and datamodule.validation_outfits == frozenset()
    assert set(table.groups[datamodule.val_triplets.ravel()]) <= {"v1", "v2"}
    assert set(table.groups[datamodule.train_triplets.ravel()]) <= {"r1", "r2"}
    assert sorted(set(table.categories)) == ["bag", "shoe", "top"]  # what a type-aware model reads per row
    assert len(table) == len(ITEMS) and len(datamodule.predict_rows) == len(ITEMS) - 1  # t0: in r1 and s1


def test_synthetic_folder_round_trip(tmp_path):
    config = SynthConfig(out=tmp_path / "a", outfits=40, layout="polyvore", render=False, workers=1)
    root = generate(config) / "polyvore_outfits"
    again = generate(SynthConfig(**{**config.__dict__, "out": tmp_path / "b"})) / "polyvore_outfits"
    for name in (
        "polyvore_item_metadata.json",
        "disjoint/test.json",
        "nondisjoint/fill_in_blank_test.json",
        "disjoint/compatibility_test.txt",
    ):
        assert (root / name).read_bytes() == (again / name).read_bytes(), f"{name} is deterministic by seed"
    category = {k: v["semantic_category"] for k, v in json.loads((root / METADATA_FILE).read_text()).items()}
    item_sets = []
    for split in ("nondisjoint", "disjoint"):
        data = read_polyvore_split(root, split)
        assert [len(data.outfits[p]) for p in ("train", "valid", "test")] == [28, 4, 8]
        items = {p: {i.item_id for o in data.outfits[p] for i in o.items} for p in data.outfits}
        assert not (items["train"] & items["test"] or items["train"] & items["valid"] or items["valid"] & items["test"])
        item_sets.append(set().union(*items.values()))
        token_item = {i.token: i.item_id for o in data.outfits["test"] for i in o.items}
        real = sorted(tuple(sorted(i.token for i in o.items)) for o in data.outfits["test"])
        assert sorted(tuple(sorted(q.tokens)) for q in data.compatibility if q.label == 1) == real
        lines = data.compatibility  # each real outfit, then a fake one of as many items from other outfits
        assert [q.label for q in lines] == [1, 0] * len(real)
        assert all(len(r.tokens) == len(f.tokens) and not set(r.tokens) & set(f.tokens) for r, f in zip(lines[::2], lines[1::2]))
        assert all(len(q.answers) == 4 and len({category[token_item[a]] for a in q.answers}) == 1 for q in data.fitb)
        assert len({q.correct for q in data.fitb}) > 1, "the right answer is not always first"
    assert not item_sets[0] & item_sets[1]


def test_ctl_data_stats_on_a_polyvore_folder(tmp_path, capsys):
    root = generate(SynthConfig(out=tmp_path / "synth", outfits=40, layout="polyvore", render=False, workers=1)) / "polyvore_outfits"
    main(["stats", str(root)])
    output = capsys.readouterr().out
    data = read_polyvore_split(root, "disjoint")
    test_items = {i.item_id for o in data.outfits["test"] for i in o.items}
    test_categories = {i.category for o in data.outfits["test"] for i in o.items}
    assert re.search(rf"disjoint\s+\W\s+test\s+\W\s+8\s+\W\s+{len(test_items)}\s+\W\s+{len(test_categories)}\s", output)
    assert re.search(r"nondisjoint\s+\W\s+all\s+\W\s+40\s", output)
    assert f"disjoint test questions: real outfits: 8, fake outfits: 8, FITB questions: {len(data.fitb)}" in output


@pytest.mark.slow
def test_tiny_training_run_on_a_generated_folder(tmp_path):
    source = SyntheticPolyvore(tmp_path / "data" / "synthetic", outfits=60, split="disjoint")
    source.ensure()
    overrides = [
        "data=polyvore",
        f"data.source.root={source.root}",
        "data.source.split=disjoint",
        "data.image_size=32",
        "data.num_workers=0",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        "recommendation_examples=2",
    ]
    train_in_process(tmp_path / "out", tmp_path / "data", overrides)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    for key in ("test/compatibility_auc", "test/fitb_accuracy", "test/triplet_accuracy", "oracle/compatibility_auc"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert np.isfinite(metrics["val/triplet_accuracy"])
