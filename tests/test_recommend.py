"""Recommendations: the engine, the ctl-recommend CLI, own-image queries and its error cases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import shared_file
from PIL import Image

from ctl_lightning.cli.recommend import main as recommend_main
from ctl_lightning.evaluation.recommendations import style_agreement
from ctl_lightning.retrieval.catalog import Catalog
from ctl_lightning.retrieval.index import ExactIndex, FaissIndex
from ctl_lightning.retrieval.recommend import Recommender


@pytest.fixture(scope="module")
def recommender(tiny_run):
    return Recommender(tiny_run)


def _cli(*argv: str) -> None:
    recommend_main(list(argv))


def test_similar_cli_writes_json_and_picture_within_the_category(tiny_run, recommender, tmp_path, capsys):
    query_row = int(recommender.similar.row_ids[5])
    _cli("similar", "--catalog", str(tiny_run), "--product", str(query_row), "--k", "5", "--out", str(tmp_path))
    payload = json.loads((tmp_path / "recommendations.json").read_text())
    query_category = recommender.table.spec(recommender.position(query_row)).category
    assert payload["mode"] == "similar" and payload["query"]["row_id"] == query_row
    items = payload["items"]
    assert len(items) == 5 and [i["rank"] for i in items] == [1, 2, 3, 4, 5]
    assert all(i["category"] == query_category and i["row_id"] != query_row for i in items)
    assert [i["score"] for i in items] == sorted((i["score"] for i in items), reverse=True)
    assert all(Path(i["image"]).name.endswith(".jpg") and len(i["key"].split("@")) == 2 for i in items)
    picture = Image.open(tmp_path / "recommendations.png")
    assert picture.width > 6 * 128 and picture.height > 128
    assert "wrote" in capsys.readouterr().out


def test_similar_scores_are_the_exact_cosines(recommender):
    query = recommender.product_query(7)
    result = recommender.recommend_similar(query, k=3)
    for item in result.items:
        vector = recommender.similar.embeddings[recommender.position(item["row_id"])]
        assert item["score"] == pytest.approx(float(np.dot(query.similar, vector)), abs=1e-5)


def test_exact_duplicates_of_the_query_are_not_recommended(recommender):
    query = recommender.product_query(3)
    twin = recommender.product_query(4)
    twin.similar, twin.category, twin.row_id = query.similar.copy(), query.category, None  # same image, not a catalog row
    items = recommender.recommend_similar(twin, k=5).items
    assert all(i["row_id"] != 3 for i in items), "the identical catalog image is a duplicate, not a recommendation"


def test_complementary_takes_the_best_of_each_other_category(tiny_run, recommender, tmp_path):
    query = recommender.product_query(11)
    per_category = recommender.recommend_complementary(query, k=5)
    categories = [i["category"] for i in per_category.items]
    assert query.category not in categories and len(set(categories)) == 5
    plain = recommender.recommend_complementary(query, k=5, per_category=0)
    assert all(i["category"] != query.category for i in plain.items)
    assert plain.items[0]["row_id"] == per_category.items[0]["row_id"]
    assert [i["score"] for i in plain.items] >= [i["score"] for i in per_category.items]
    key = recommender.table.spec(recommender.position(11)).key
    _cli("complementary", "--catalog", str(tiny_run), "--product", key, "--per-category", "0", "--out", str(tmp_path))
    payload = json.loads((tmp_path / "recommendations.json").read_text())
    assert [i["row_id"] for i in payload["items"]] == [i["row_id"] for i in plain.items]


def test_own_image_query_infers_its_category(tiny_run, tmp_path, capsys):
    example = shared_file("ctl", "example.png")
    _cli("complementary", "--catalog", str(tiny_run), "--image", str(example), "--out", str(tmp_path / "whole"))
    payload = json.loads((tmp_path / "whole" / "recommendations.json").read_text())
    inferred = payload["query"]["inferred_category"]
    assert inferred["category"] == payload["query"]["category"] and 0 < inferred["confidence"] <= 1
    assert len(payload["items"]) == 5 and "inferred category" in capsys.readouterr().out
    # The skirt in the first of the four views of the collage in example.png, with the category given.
    _cli(
        "similar",
        "--catalog",
        str(tiny_run),
        "--image",
        str(example),
        "--box",
        "0.005,0.045,0.11,0.36",
        "--category",
        "Skirts",
        "--out",
        str(tmp_path / "skirt"),
    )
    payload = json.loads((tmp_path / "skirt" / "recommendations.json").read_text())
    assert payload["query"]["category"] == "Skirts" and "inferred_category" not in payload["query"]
    assert all(i["category"] == "Skirts" for i in payload["items"])


def test_image_query_embeds_like_the_catalog(recommender):
    """A catalog product's own crop, embedded as an outside image, lands on itself."""
    position = 21
    spec = recommender.table.spec(position)
    query = recommender.image_query(spec.image_path, category=spec.category, box=spec.box)
    assert float(np.dot(query.compatible, recommender.compatible.embeddings[position])) > 0.999


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--product", "999999"], "unknown product '999999'"),
        (["--product", "nosuch@0.1,0.1,0.1,0.1"], "unknown product"),
        (["--product", "1", "--k", "0"], "k must be a positive number of recommendations, got 0"),
        (["--image", "{corrupt}"], "cannot read image"),
        (["--image", "{missing}"], "not found"),
        (["--image", "{example}", "--category", "Gloves"], "category 'Gloves' has no items"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(tiny_run, tmp_path, capsys, argv, message):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    values = {"{corrupt}": str(corrupt), "{missing}": str(tmp_path / "missing.jpg"), "{example}": str(shared_file("ctl", "example.png"))}
    argv = [values.get(a, a) for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        _cli("similar", "--catalog", str(tiny_run), *argv, "--out", str(tmp_path / "out"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ctl-recommend: error:") and message in err[0]


def test_missing_and_foreign_catalogs_are_rejected(tiny_run, tmp_path, capsys):
    similar = Catalog.load(tiny_run / "catalogs" / "similar")
    store = similar.resolve(similar.manifest["data"]["store"])  # relative to the run folder
    for catalog, message in ((tmp_path / "nothing", "no such catalog folder"), (store, "not a catalog")):
        with pytest.raises(SystemExit) as exit_info:
            _cli("similar", "--catalog", str(catalog), "--product", "1", "--out", str(tmp_path / "out"))
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_faiss_and_exact_search_agree_on_a_large_catalog():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(12_000, 128)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    categories = rng.choice(["a", "b", "c"], size=len(vectors))
    queries = rng.normal(size=(64, 128)).astype(np.float32)
    exact, flat = ExactIndex(vectors, categories), FaissIndex(vectors, categories)
    for category in ("a", "b", "c"):
        exact_scores, exact_rows = exact.search(queries, 10, category)
        faiss_scores, faiss_rows = flat.search(queries, 10, category)
        assert np.array_equal(exact_rows, faiss_rows)
        np.testing.assert_allclose(exact_scores, faiss_scores, atol=1e-5)
        assert set(categories[exact_rows.ravel()]) == {category}


def test_float16_storage_keeps_nearly_all_of_the_top_10():
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(5_000, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    categories = np.array(["all"] * len(vectors))
    queries = vectors[:100] + 0.3 * rng.normal(size=(100, 64)).astype(np.float32)
    full = ExactIndex(vectors, categories).search(queries, 10, "all")[1]
    half = ExactIndex(vectors, categories, dtype="float16").search(queries, 10, "all")[1]
    recall = np.mean([len(set(f) & set(h)) / 10 for f, h in zip(full, half)])
    assert recall > 0.95


def test_style_agreement_counts_matching_planted_styles(recommender):
    result = style_agreement(recommender, queries=20, k=5, seed=3)
    assert result["queries"] == 20 and 0 <= result["complementary_style_agreement"] <= 1
    assert result["similar_style_agreement"] > result["chance"]
    # One query, recomputed by hand from the recommendations themselves.
    table = recommender.table
    candidates = np.flatnonzero((table.splits == "test") & (table.styles != ""))
    position = np.random.default_rng(3).choice(candidates, size=1, replace=False)[0]
    query = recommender.product_query(int(recommender.similar.row_ids[position]))
    expected = {}
    for name, rec in (
        ("similar", recommender.recommend_similar(query, 5)),
        ("complementary", recommender.recommend_complementary(query, 5)),
    ):
        expected[name] = np.mean([table.styles[recommender.position(i["row_id"])] == table.styles[position] for i in rec.items])
    single = style_agreement(recommender, queries=1, k=5, seed=3)
    assert single["similar_style_agreement"] == pytest.approx(expected["similar"])
    assert single["complementary_style_agreement"] == pytest.approx(expected["complementary"])
