"""Approximate indexes (issue 14): ivf and hnsw against exact search, saved indexes reused and rebuilt
when stale or damaged, the --index options of ctl-recommend and ctl-serve, and the benchmark's smoke run."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
from fastapi.testclient import TestClient
from test_faults import one_line_error, run_cli
from test_type_aware import write_catalogs

from ctl_lightning.benchmarks import ann as ann_bench
from ctl_lightning.benchmarks.ann import clustered_catalog
from ctl_lightning.cli.recommend import main as recommend_main
from ctl_lightning.data.products import ProductSpec, ProductTable
from ctl_lightning.errors import CtlError
from ctl_lightning.retrieval import ann_store
from ctl_lightning.retrieval.ann import ApproximateIndex
from ctl_lightning.retrieval.index import ExactIndex, IndexSettings
from ctl_lightning.retrieval.recommend import Recommender
from ctl_lightning.retrieval.subspaces import PairSubspaces
from ctl_lightning.serve.app import create_app
from ctl_lightning.serve.cli import main as serve_main
from ctl_lightning.serve.sample_run import toy_store, write_run_catalogs
from ctl_lightning.serve.state import ServeSettings

BIG, SMALL = 6_000, 400  # rows of the partition searched approximately, and of one that stays exact


@pytest.fixture(scope="module")
def catalog():
    """A big and a small category of clustered 32-d vectors (interleaved, as a catalog's rows are), and held-out queries."""
    vectors = clustered_catalog(BIG + SMALL + 100, dim=32, seed=3)
    categories = np.array(["big"] * BIG + ["small"] * SMALL)
    np.random.default_rng(0).shuffle(categories)
    return vectors[: BIG + SMALL].copy(), categories, vectors[BIG + SMALL :]


def approximate(catalog, kind: str, folder=None, **settings) -> ApproximateIndex:
    vectors, categories, _ = catalog
    return ApproximateIndex(vectors, categories, IndexSettings(kind, exact_below=1_000, **settings), folder)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_kinds_find_the_exact_top_10_and_small_partitions_stay_exact(catalog, kind):
    vectors, categories, queries = catalog
    exact, index = ExactIndex(vectors, categories), approximate(catalog, kind)
    found, truth = index.search(queries, 10, "big"), exact.search(queries, 10, "big")
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found[1], truth[1])])
    assert recall >= 0.95, f"{kind} recall@10 {recall:.3f} at its defaults"
    assert (categories[found[1]] == "big").all()
    # The scores are the exact cosines of the rows found (faiss keeps the vectors themselves).
    np.testing.assert_allclose(found[0], np.einsum("qd,qkd->qk", queries, vectors[found[1]]), atol=1e-5)
    small = index.search(queries, 10, "small")
    assert np.array_equal(small[1], exact.search(queries, 10, "small")[1])
    assert index.events == {"big": "built"}  # the small partition has no index


def test_a_query_that_finds_fewer_than_k_is_searched_wider(catalog):
    vectors, categories, queries = catalog
    index = ApproximateIndex(vectors, categories, IndexSettings("ivf", exact_below=0, nlist=10, nprobe=1))
    scores, rows = index.search(queries[:3], 150, "small")
    assert (index.partition_index("small").search(queries[:3], 150)[1] < 0).any()  # one cell holds fewer than 150
    assert rows.shape == (3, 150) and (categories[rows] == "small").all() and all(len(set(r)) == 150 for r in rows)
    assert (np.diff(scores, axis=1) <= 0).all()


def test_a_saved_index_is_loaded_and_rebuilt_when_the_catalog_or_a_build_setting_changes(catalog, tmp_path, caplog):
    first = approximate(catalog, "hnsw", tmp_path)
    first.warm()
    saved = next(tmp_path.glob("big-*/index.faiss"))
    written = saved.stat().st_mtime_ns
    assert first.events == {"big": "built"} and json.loads(saved.with_name("index.json").read_text())["identity"]["rows"] == BIG
    again = approximate(catalog, "hnsw", tmp_path, ef_search=16)  # a search setting applies to the saved index
    again.warm()
    assert again.events == {"big": "loaded"} and saved.stat().st_mtime_ns == written
    caplog.set_level(logging.WARNING)
    rebuilt = approximate(catalog, "hnsw", tmp_path, m=8)
    rebuilt.warm()
    assert rebuilt.events == {"big": "rebuilt"} and "the settings now are {'m': 8" in caplog.text
    vectors, categories, queries = catalog
    changed = vectors.copy()
    changed[np.flatnonzero(categories == "big")[7]] *= -1
    caplog.clear()
    index = ApproximateIndex(changed, categories, IndexSettings("hnsw", exact_below=1_000, m=8), tmp_path)
    index.warm()
    assert index.events == {"big": "rebuilt"} and "the catalog's vectors in this partition changed" in caplog.text
    assert ApproximateIndex(changed, categories, index.settings, tmp_path).search(queries[:1], 3, "big")[1].shape == (1, 3)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda path: path.write_bytes(b"x" * path.stat().st_size), "index.faiss is unreadable"),
        (lambda path: path.write_bytes(path.read_bytes()[:100]), "index.faiss holds 100 bytes"),
        (lambda path: path.with_name("index.json").write_text("{"), "index.json is unreadable"),
    ],
)
def test_a_damaged_saved_index_is_rebuilt_with_a_warning(catalog, tmp_path, caplog, damage, message):
    approximate(catalog, "ivf", tmp_path).warm()
    damage(next(tmp_path.glob("big-*/index.faiss")))
    caplog.set_level(logging.WARNING)
    index = approximate(catalog, "ivf", tmp_path)
    index.warm()
    assert index.events == {"big": "rebuilt"} and message in caplog.text
    assert approximate(catalog, "ivf", tmp_path).search(catalog[2][:2], 5, "big")[1].shape == (2, 5)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_catalog_builds_in_memory_and_says_so_once(catalog, tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(ann_store, "_warned_unsaved", False)
    tmp_path.chmod(0o555)
    caplog.set_level(logging.WARNING)
    try:
        for _ in range(2):
            index = approximate(catalog, "ivf", tmp_path / "index")
            index.warm()
            assert index.events == {"big": "built"}
    finally:
        tmp_path.chmod(0o755)
    assert caplog.text.count("cannot save the index") == 1 and not (tmp_path / "index").exists()


def test_an_unsaveable_index_is_kept_in_memory_and_said_once(catalog, tmp_path, caplog, monkeypatch):
    """What a read-only catalog does, for a user whom permissions do not stop (root)."""
    monkeypatch.setattr(ann_store, "_warned_unsaved", False)
    (tmp_path / "index").write_text("a file where the index folder would go")
    caplog.set_level(logging.WARNING)
    for _ in range(2):
        index = approximate(catalog, "ivf", tmp_path / "index" / "ivf")
        index.warm()
        assert index.events == {"big": "built"}
    assert caplog.text.count("cannot save the index") == 1


def test_index_settings_are_checked_with_one_line_errors():
    assert IndexSettings.parse("hnsw", ["ef_search=32", "exact_below=0"]) == IndexSettings("hnsw", exact_below=0, ef_search=32)
    for kind, params, message in (
        ("ivf", ["ef_search=32"], "NAME one of the ivf index's settings: exact_below, nlist, nprobe"),
        ("hnsw", ["m=many"], "'many' is not a whole number"),
        ("hnsw", ["m=0"], "m must be a whole number of at least 1"),
        ("exact", ["nprobe=4"], "the exact index takes no settings"),
        ("annoy", [], "unknown index 'annoy'; choose one of exact, faiss, auto, ivf, hnsw"),
    ):
        with pytest.raises(CtlError, match=message):
            IndexSettings.parse(kind, params)


def test_type_aware_pair_indexes_are_approximate_and_saved_too(tmp_path):
    categories = ["top", "shoe", "bag"] * 40
    table = ProductTable([ProductSpec(f"item {i}", "o1", c, "test", "none.jpg", None) for i, c in enumerate(categories)])
    pairs = [("bag", "bag"), ("bag", "shoe"), ("bag", "top"), ("shoe", "shoe"), ("shoe", "top"), ("top", "top")]
    matrices = np.repeat(np.eye(6, dtype=np.float32)[None], len(pairs), axis=0)
    matrices[pairs.index(("shoe", "top"))] = np.diag([0.0, 0, 1, 1, 0, 0])
    vectors = np.random.default_rng(0).normal(size=(len(categories), 6))
    write_catalogs(tmp_path, table, vectors, PairSubspaces(matrices, pairs, "learned"))
    hnsw = IndexSettings("hnsw", exact_below=0)  # ef_search 256 over 40 items: every item is seen, as exact search sees it

    def ranking(index):
        recommender = Recommender(tmp_path, index=index)
        items = recommender.recommend_complementary(recommender.product_query("item 0"), k=6, per_category=3).items
        return [item["key"] for item in items], recommender.index_summary()

    assert ranking(hnsw)[0] == ranking("exact")[0]
    assert len(list((tmp_path / "catalogs" / "compatible" / "index" / "hnsw-pairs").glob("top-*/*/index.faiss"))) == 2
    assert ranking(hnsw)[1].startswith("hnsw index: partitions 2 loaded;")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ann_run")
    return write_run_catalogs(root / "run", toy_store(root))


def test_ctl_recommend_searches_with_the_index_it_is_given(run, tmp_path, capsys):
    product = ["--catalog", str(run), "--product", "3", "--k", "4"]
    recommend_main(["complementary", *product, "--out", str(tmp_path / "exact")])
    capsys.readouterr()
    approximate_run = ["--index", "hnsw", "--index-param", "exact_below=0", "--index-param", "ef_search=200"]
    for name in ("built", "loaded"):
        recommend_main(["complementary", *product, *approximate_run, "--out", str(tmp_path / name)])
        assert f"ctl-recommend: hnsw index: partitions 12 {name}" in capsys.readouterr().err
    exact, hnsw = (json.loads((tmp_path / name / "recommendations.json").read_text()) for name in ("exact", "loaded"))
    assert exact["engine"] == "exact" and exact["index"] == {"kind": "exact"}
    assert hnsw["engine"] == "hnsw" and hnsw["index"] == {
        "kind": "hnsw",
        "exact_below": 0,
        "m": 32,
        "ef_construction": 80,
        "ef_search": 200,
    }
    # ef_search above every partition's size: the walk sees every item, so it finds what exact search finds.
    assert [i["row_id"] for i in hnsw["items"]] == [i["row_id"] for i in exact["items"]]
    assert [i["score"] for i in hnsw["items"]] == pytest.approx([i["score"] for i in exact["items"]], abs=1e-5)
    assert len(list((run / "catalogs" / "compatible" / "index" / "hnsw").glob("*/index.faiss"))) == 12
    code, stderr = run_cli(recommend_main, ["similar", *product, "--index", "ivf", "--index-param", "m=4"], capsys)
    assert code == 2 and "not NAME=VALUE with NAME one of the ivf index's settings" in one_line_error(stderr, "ctl-recommend")


def test_auto_records_the_engine_each_catalog_kept_in_recommendations_and_healthz(run, tmp_path):
    recommend_main(["similar", "--catalog", str(run), "--product", "3", "--k", "4", "--index", "auto", "--out", str(tmp_path / "auto")])
    recommend_main(["similar", "--catalog", str(run), "--product", "3", "--k", "4", "--out", str(tmp_path / "exact")])
    auto, exact = (json.loads((tmp_path / name / "recommendations.json").read_text()) for name in ("auto", "exact"))
    assert auto["engine"] == "auto" and auto["index"]["kind"] == "auto"
    for catalog in ("similar", "compatible"):
        choice = auto["index"]["chosen"][catalog]
        assert choice["engine"] in ("exact", "faiss") and set(choice["single_query_ms"]) == {"exact", "faiss"} and choice["rows"] > 0
    assert [i["row_id"] for i in auto["items"]] == [i["row_id"] for i in exact["items"]]
    with TestClient(create_app(run, ServeSettings(index=IndexSettings("auto")))) as client:
        assert set(client.get("/healthz").json()["index"]["chosen"]) == {"similar", "compatible"}
        assert client.get("/v1/similar/3?k=2").json()["index"]["chosen"]["similar"]["engine"] in ("exact", "faiss")


def test_ctl_serve_takes_the_index_options_and_reports_the_index(run, capsys):
    settings = ServeSettings(index=IndexSettings("ivf", exact_below=0, nprobe=8))
    with TestClient(create_app(run, settings)) as client:
        assert client.get("/healthz").json()["index"] == {"kind": "ivf", "exact_below": 0, "nlist": 0, "nprobe": 8}
        answer = client.get("/v1/similar/3?k=2").json()
        assert answer["engine"] == "ivf" and answer["index"]["nprobe"] == 8 and len(answer["items"]) == 2
    code, stderr = run_cli(serve_main, [str(run), "--index", "exact", "--index-param", "nprobe=4"], capsys)
    assert code == 2 and "the exact index takes no settings" in one_line_error(stderr, "ctl-serve")


def test_the_benchmark_smoke_run_writes_its_report(tmp_path, capsys):
    ann_bench.main(["--rows", "4000", "--queries", "50", "--out", str(tmp_path), "--data", str(tmp_path / "data")])
    size = json.loads((tmp_path / "ann.json").read_text())["hosts"][0]["sizes"][0]
    assert size["rows"] == 4000 and size["exact"]["recall_at_10"] == 1.0
    for kind, name in (("ivf", "nprobe"), ("hnsw", "ef_search")):
        assert [s[name] for s in size[kind]["searches"]] == list(ann_bench.SEARCHES[kind][1])
        assert size[kind]["load_s"] > 0 and size[kind]["index_mib"] > 4000 * ann_bench.DIM * 4 / 2**20
        assert max(s["recall_at_10"] for s in size[kind]["searches"]) >= 0.95
    report = (tmp_path / "ANN.md").read_text()
    assert "### 4,000 rows" in report and "| hnsw | m 32, ef_construction 80 | ef_search 128 |" in report
    assert "not measured on this host yet" in report and not (tmp_path / "data" / "ivf").exists()
    measured = [
        {"rows": rows, "hnsw": {"build_s": 1.0, "rows_per_s": rate}, "ivf": {"skipped": "-"}} for rows, rate in ((10, 10.0), (1000, 1000.0))
    ]
    skip = ann_bench.projected_skips(measured, 10**7, 20)
    assert list(skip) == ["hnsw"] and "1,000 rows/s measured at 1,000 rows" in skip["hnsw"] and "167 min" in skip["hnsw"]
    assert ann_bench.projected_skips(measured, 1000, 20) == {}  # 1,000 rows at 10 rows/s: under 2 minutes
