"""model=type_aware: category-pair subspaces, the loss in them, the metrics and complementary search that
measure each pair in its subspace, and tiny training runs of each subspace kind."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import TINY, compose_config, train_in_process

from ctl_lightning.app.logic import catalog_summary
from ctl_lightning.config_checks import validate
from ctl_lightning.data.products import ProductSpec, ProductTable
from ctl_lightning.errors import CtlError
from ctl_lightning.evaluation import metrics
from ctl_lightning.losses import TripletLoss, TypeAwareTripletLoss
from ctl_lightning.models.subspaces import CategorySubspaces
from ctl_lightning.retrieval.catalog import KINDS
from ctl_lightning.retrieval.merge import Shard, write_catalog
from ctl_lightning.retrieval.recommend import Recommender
from ctl_lightning.retrieval.subspaces import PairSubspaces

# Sorted categories give the pairs (shoe, shoe) 0, (shoe, top) 1, (top, top) 2; fixed masks of a
# 6-dimensional embedding give each pair two dimensions: (shoe, top) measures dimensions 2 and 3.
CATEGORIES = ["shoe", "top"]
SHOE_TOP = 1


def fixed() -> CategorySubspaces:
    return CategorySubspaces(CATEGORIES, 6, "fixed")


def test_pairs_are_unordered_and_an_unknown_category_keeps_the_general_embedding():
    subspaces = CategorySubspaces(["bag", "shoe", "top"], 8, "learned")
    assert subspaces.pairs == [("bag", "bag"), ("bag", "shoe"), ("bag", "top"), ("shoe", "shoe"), ("shoe", "top"), ("top", "top")]
    ids = subspaces.category_ids(np.array(["top", "shoe", "hat"], dtype=object))
    assert ids.tolist() == [2, 1, -1]
    assert subspaces.pair_ids(ids, ids.flip(0)).tolist() == [-1, 3, -1]  # (shoe, shoe) in the middle
    assert subspaces.pair_ids(ids[:2], ids[:2].flip(0)).tolist() == [4, 4]
    x = torch.randn(3, 8)
    assert torch.allclose(subspaces(x, torch.tensor([-1, -1, -1])), F.normalize(x, dim=1))


@pytest.mark.parametrize("kind, weight_shape", [("fixed", (3, 6)), ("learned", (3, 6)), ("projection", (3, 6, 6))])
def test_subspace_shapes_and_mask_regulariser(kind, weight_shape):
    subspaces = CategorySubspaces(CATEGORIES, 6, kind)
    assert tuple(subspaces.weight.shape) == weight_shape and tuple(subspaces.matrices().shape) == (3, 6, 6)
    x, pairs = torch.randn(4, 6), torch.tensor([0, 1, 1, 2])
    out = subspaces(x, pairs)
    assert out.shape == (4, 6) and torch.allclose(out.norm(dim=1), torch.ones(4))
    # The stored maps reproduce the module: what a catalog holds is what the model measured in.
    assert torch.allclose(out, F.normalize(torch.einsum("nij,nj->ni", subspaces.matrices()[pairs], x), dim=1), atol=1e-6)
    expected_l1 = {"fixed": 0.0, "learned": F.relu(subspaces.weight[pairs]).sum(1).mean().item(), "projection": 6.0}[kind]
    assert subspaces.l1(pairs).item() == pytest.approx(expected_l1)
    assert subspaces.weight.requires_grad == (kind != "fixed")


def test_fixed_masks_are_disjoint_blocks_and_need_two_dimensions_per_pair():
    masks = fixed().weight
    assert masks.sum(1).tolist() == [2.0, 2.0, 2.0] and masks.sum(0).tolist() == [1.0] * 6
    assert masks[SHOE_TOP].tolist() == [0, 0, 1, 1, 0, 0]
    with pytest.raises(CtlError, match=r"model.embedding_dim >= 6 \(2 dimensions for each of the 3 category pairs\), got 5"):
        CategorySubspaces(CATEGORIES, 5, "fixed")
    with pytest.raises(CtlError, match=r"model.subspaces must be one of fixed, learned, projection"):
        CategorySubspaces(CATEGORIES, 6, "masks")


def hand_made_triplet():
    """A top, then two shoes: the first matches it in the (shoe, top) subspace but not overall, the
    second the other way round."""
    embeddings = torch.tensor([[3.0, 0, 1, 0, 0, 0], [-3.0, 0, 1, 0, 0, 0], [3.0, 0, 0, 1, 0, 0]])
    categories = torch.tensor([1, 0, 0])  # top, shoe, shoe
    return embeddings, categories


def test_loss_measures_the_triplet_in_the_anchor_positive_subspace():
    embeddings, categories = hand_made_triplet()
    loss = TypeAwareTripletLoss(margin=0.3, mask_weight=0.0, embed_weight=0.0)
    matching, swapped = torch.tensor([[0, 1, 2]]), torch.tensor([[0, 2, 1]])
    # In dimensions 2-3 the anchor and the first shoe coincide and the second is sqrt(2) away.
    assert loss(embeddings, None, matching, categories, fixed()).item() == pytest.approx(0.0)
    assert loss(embeddings, None, swapped, categories, fixed()).item() == pytest.approx(math.sqrt(2) + 0.3, abs=1e-6)
    # The single space sees the opposite: the first shoe is the far one.
    assert TripletLoss(0.3, distance="euclidean")(embeddings, None, matching).item() > 1.0


def test_loss_adds_the_mask_l1_and_embedding_l2_regularisers():
    embeddings, categories = hand_made_triplet()
    triplets = torch.tensor([[0, 1, 2], [0, 1, 2]])
    subspaces = CategorySubspaces(CATEGORIES, 6, "learned")
    with torch.no_grad():
        subspaces.weight.copy_(torch.tensor([0.5, -1.0, 0.0, 0.0, 0.0, 0.0]).expand(3, 6))
    plain = TypeAwareTripletLoss(mask_weight=0.0, embed_weight=0.0)(embeddings, None, triplets, categories, subspaces)
    weighted = TypeAwareTripletLoss(mask_weight=0.1, embed_weight=0.01)(embeddings, None, triplets, categories, subspaces)
    rms_norm = math.sqrt((9 + 1) * 3 / 3)  # every row has squared norm 10
    assert (weighted - plain).item() == pytest.approx(0.1 * 0.5 + 0.01 * rms_norm, abs=1e-6)  # the ReLU'd mask sums to 0.5
    weighted.backward()
    assert subspaces.weight.grad is not None and subspaces.weight.grad[SHOE_TOP, 0] > 0  # L1 pulls the open entry down


def test_metrics_score_each_item_pair_in_its_subspace():
    """Outfit (0, 1) is real, (2, 3) fake: the real pair agrees only in the (shoe, top) dimensions, the
    fake pair everywhere but there. One space ranks them backwards; the pair subspaces rank them right."""
    emb = torch.tensor([[3.0, 0, 1, 0, 0, 0], [-3.0, 0, 1, 0, 0, 0], [3.0, 0, 1, 0, 0, 0], [3.0, 0, -1, 0, 0, 0]])
    categories = torch.tensor([1, 0, 1, 0])
    position = metrics.position_lookup(torch.arange(4), 4)
    real, fake = np.array([[0, 1]]), np.array([[2, 3]])
    for measure in ("cosine", "distance"):
        assert metrics.compatibility_auc(emb, position, real, fake, measure) == 0.0
        assert metrics.compatibility_auc(emb, position, real, fake, measure, fixed(), categories) == 1.0
    questions, answers = np.array([[0]]), np.array([[1, 3]])  # the right answer first
    assert metrics.fitb_accuracy(emb, position, questions, answers, "distance") == 0.0
    assert metrics.fitb_accuracy(emb, position, questions, answers, "distance", fixed(), categories) == 1.0
    triplets = np.array([[0, 1, 3]])
    assert metrics.triplet_accuracy(emb, position, triplets) == 0.0
    assert metrics.triplet_accuracy(emb, position, triplets, fixed(), categories) == 1.0


def write_catalogs(run, table: ProductTable, vectors: np.ndarray, subspaces: PairSubspaces | None) -> None:
    """Both catalogs of a hand-made run: the same unit vectors in each, the subspaces in the compatible one."""
    rows = table.positions
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    run.mkdir(parents=True, exist_ok=True)
    for kind in KINDS:
        shard = run / f"{kind}.bin"
        vectors.tofile(shard)
        manifest = {
            "model": {"backbone": "hand-made", "state_fingerprint": "f" * 20, "checkpoint": None},
            "config": {"path": None, "fingerprint": None},
            "data": {},
            "run_dir": "../..",
            "kind": kind,
            "dim": vectors.shape[1],
        }
        write_catalog(
            run / "catalogs" / kind,
            rows,
            [Shard(rows, shard, vectors.shape[1])],
            table,
            manifest,
            subspaces=subspaces if kind == "compatible" else None,
        )


def test_complementary_search_ranks_in_the_pair_subspace(tmp_path):
    """Shoe 1 is nearer the top overall, shoe 2 in the (shoe, top) subspace; bags, whose pairs keep the
    general space (identity maps), rank as in one space."""
    names = [("top", "top"), ("shoe", "shoe 1"), ("shoe", "shoe 2"), ("bag", "bag 1"), ("bag", "bag 2")]
    table = ProductTable([ProductSpec(key, "o1", category, "test", "none.jpg", None) for category, key in names])
    vectors = np.array([[1.0, 0, 1, 0], [1.0, 0, -0.2, 0], [0.0, 1, 1, 0], [1.0, 0, 0.5, 0], [0.0, 1, 0, 1]])
    pairs = [("bag", "bag"), ("bag", "shoe"), ("bag", "top"), ("shoe", "shoe"), ("shoe", "top"), ("top", "top")]
    matrices = np.repeat(np.eye(4, dtype=np.float32)[None], len(pairs), axis=0)
    matrices[pairs.index(("shoe", "top"))] = np.diag([0.0, 0, 1, 0])  # only dimension 2 relates shoes to tops
    for name, subspaces in (("single", None), ("type_aware", PairSubspaces(matrices, pairs, "learned"))):
        write_catalogs(tmp_path / name, table, vectors, subspaces)
    single, type_aware = Recommender(tmp_path / "single"), Recommender(tmp_path / "type_aware")
    assert catalog_summary(single)["complementary_search"] == "one space"
    assert catalog_summary(type_aware)["complementary_search"] == "learned subspaces of 6 category pairs"  # the app says which

    def ranking(recommender, per_category):
        found = recommender.recommend_complementary(recommender.product_query("top"), k=4, per_category=per_category).items
        return [(item["key"], item["score"]) for item in found]

    assert [key for key, _ in ranking(single, 0)] == ["bag 1", "shoe 1", "shoe 2", "bag 2"]
    in_subspaces = ranking(type_aware, 0)
    assert [key for key, _ in in_subspaces] == ["shoe 2", "bag 1", "bag 2", "shoe 1"]
    assert dict(in_subspaces)["shoe 2"] == pytest.approx(1.0) and dict(in_subspaces)["shoe 1"] == pytest.approx(-1.0)
    assert dict(in_subspaces)["bag 1"] == pytest.approx(dict(ranking(single, 0))["bag 1"])
    assert [key for key, _ in ranking(type_aware, 1)] == ["shoe 2", "bag 1"]
    # Similar products never use the subspaces.
    similar = [item["key"] for item in type_aware.recommend_similar(type_aware.product_query("shoe 1"), k=1).items]
    assert similar == [item["key"] for item in single.recommend_similar(single.product_query("shoe 1"), k=1).items]


def test_damaged_subspaces_are_a_one_line_error(tmp_path):
    table = ProductTable(
        [ProductSpec("a", "o1", "top", "test", "none.jpg", None), ProductSpec("b", "o1", "shoe", "test", "none.jpg", None)]
    )
    pairs = [("shoe", "shoe"), ("shoe", "top"), ("top", "top")]
    write_catalogs(tmp_path, table, np.eye(2, 3), PairSubspaces(np.ones((3, 3, 3), np.float32), pairs, "projection"))
    np.save(tmp_path / "catalogs" / "compatible" / "subspaces.npy", np.ones((2, 3, 3), np.float32))
    with pytest.raises(CtlError, match=r"subspaces.npy: float32 \(2, 3, 3\), but .* says float32 \(3, 3, 3\)"):
        Recommender(tmp_path)


def test_model_and_loss_must_both_be_type_aware(tmp_path):
    cfg = compose_config("train", tmp_path, tmp_path, ["model=type_aware"])
    assert cfg.loss._target_.endswith("TypeAwareTripletLoss") and cfg.loss.margin == 0.3
    validate(cfg)
    for overrides, problem in (
        (["model=type_aware", "loss=triplet"], "go together"),
        (["loss=type_aware"], "go together"),
        (["model=type_aware", "model.subspaces=masks"], "model.subspaces='masks'"),
        (["model=type_aware", "loss.mask_weight=-1"], "loss.mask_weight=-1"),
    ):
        with pytest.raises(CtlError, match=problem):
            validate(compose_config("train", tmp_path, tmp_path, overrides))


def test_training_takes_the_datasets_categories(data_dir, tmp_path):
    """Training batches name categories by their index in the dataset's list, so a model given other
    categories would pick wrong subspaces: it is refused before fit."""
    from ctl_lightning.pipeline import train

    cfg = compose_config(
        "train", tmp_path, data_dir, [*TINY, "model=type_aware", "model.pretrained=false", "model.categories=[Bags,Shoes]"]
    )
    with pytest.raises(CtlError, match=r"model\.categories must be the dataset's categories"):
        train(cfg)


TINY_POLYVORE = [
    "data.source.outfits=60",
    "data.image_size=32",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "recommendation_examples=2",
]


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind, data, size",
    [
        ("fixed", "toy", [*TINY, "model.embedding_dim=256"]),
        ("learned", "synthetic", TINY),
        ("projection", "synthetic_polyvore", TINY_POLYVORE),
    ],
)
def test_tiny_training_run_of_each_subspace_kind(tmp_path, kind, data, size):
    run = tmp_path / "out"
    train_in_process(run, tmp_path / "data", ["model=type_aware", f"model.subspaces={kind}", f"data={data}", *size])
    scores = json.loads((run / "metrics.json").read_text())
    for key in ("test/triplet_accuracy", "test/fitb_accuracy", "test/compatibility_auc"):
        assert 0.0 <= scores[key] <= 1.0, key
    recommender = Recommender(run)
    subspaces = recommender.compatible.subspaces
    assert subspaces.kind == kind and len(subspaces.pairs) == len(subspaces.matrices)
    spec = recommender.table.spec(0)
    # An outside image goes through the checkpoint's own type-aware model (its categories come with it).
    query = recommender.image_query(spec.image_path, category=spec.category, box=spec.box)
    assert np.allclose(query.compatible, recommender.compatible.embeddings[0], atol=1e-4)
    assert recommender.recommend_complementary(query, k=3).items
