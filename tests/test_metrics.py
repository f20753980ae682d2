"""Test metrics on hand-made embeddings whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctl_lightning.evaluation.metrics import (
    compatibility_auc,
    fitb_accuracy,
    position_lookup,
    style_agreement_at_k,
    triplet_accuracy,
)

# Six products, row ids 10..15, embedded in 2-D.
ROWS = torch.tensor([10, 11, 12, 13, 14, 15])
EMB = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [-1.0, 0.0], [0.7, 0.7]])


@pytest.fixture
def position():
    return position_lookup(ROWS, 20)


def test_position_lookup_maps_row_ids_and_marks_the_rest(position):
    assert position[10].item() == 0 and position[15].item() == 5 and position[0].item() == -1


def test_triplet_accuracy_counts_strict_wins(position):
    triplets = np.array([[10, 11, 12], [10, 12, 11], [12, 13, 14], [10, 15, 15]])
    # right, wrong, right, tie (counts as wrong)
    assert triplet_accuracy(EMB, position, triplets) == pytest.approx(0.5)


def test_triplet_accuracy_refuses_rows_that_were_not_embedded(position):
    with pytest.raises(ValueError, match="not embedded"):
        triplet_accuracy(EMB, position, np.array([[10, 11, 3]]))


def test_fitb_picks_the_candidate_closest_to_the_question_on_average(position):
    questions = np.array([[10, 11], [12, -1]])
    answers = np.array([[15, 12, 14], [14, 13, 10]])
    # q0: mean cos to {10, 11}: 15 ~0.77, 12 ~0.06, 14 ~-0.99 -> index 0 right.
    # q1: mean cos to {12}: 14 = 0, 13 ~0.99 -> index 1 chosen, wrong.
    assert fitb_accuracy(EMB, position, questions, answers) == pytest.approx(0.5)


def test_fitb_ties_count_as_wrong(position):
    same = torch.ones(6, 2)  # every candidate scores alike: no model can tell the answer
    questions, answers = np.array([[10, 11], [12, -1]]), np.array([[13, 14, 15], [11, 10, 14]])
    assert fitb_accuracy(same, position, questions, answers) == 0.0
    # A tie between answer 0 and one other candidate loses too; a strict win counts.
    emb = EMB.clone()
    emb[1] = emb[0]  # rows 10 and 11 now coincide
    assert fitb_accuracy(emb, position, np.array([[12, 13]]), np.array([[10, 11, 14]])) == 0.0
    assert fitb_accuracy(emb, position, np.array([[10]]), np.array([[11, 12, 14]])) == 1.0


def test_fitb_ignores_padded_answers():
    # Row 15, the last of the store, is embedded: a -1 pad indexing position[-1] would stand for it,
    # and it is closer to the question than the right answer.
    position = position_lookup(ROWS, 16)
    questions = np.array([[15, -1], [10, 11]])
    answers = np.array([[12, 14, -1], [15, 12, -1]])
    # q0: mean cos to {15}: 12 ~0.71 beats 14 ~-0.71; row 15 itself would score 1.
    # q1: mean cos to {10, 11}: 15 ~0.77 beats 12 ~0.06; row 15 as a pad would tie it.
    assert fitb_accuracy(EMB, position, questions, answers) == 1.0


def test_fitb_questions_with_different_numbers_of_answers(position):
    questions = np.array([[10, -1], [12, 13], [14, -1]])
    answers = np.array([[11, -1, -1, -1], [13, 10, 14, 11], [10, 15, -1, -1]])
    # q0: one candidate, nothing beats it -> right. q1: 13 closest to {12, 13} of four -> right.
    # q2: mean cos to {14}: 10 = -1 < 15 ~-0.71 -> wrong.
    assert fitb_accuracy(EMB, position, questions, answers) == pytest.approx(2 / 3)
    # Pads only ever lose: the same questions padded wider score the same.
    wider = np.pad(answers, ((0, 0), (0, 3)), constant_values=-1)
    assert fitb_accuracy(EMB, position, np.pad(questions, ((0, 0), (0, 2)), constant_values=-1), wider) == pytest.approx(2 / 3)


def test_compatibility_auc_ranks_coherent_outfits_first(position):
    real = np.array([[10, 11, -1], [12, 13, -1]])
    fake = np.array([[10, 14, -1], [12, 14, 10]])
    assert compatibility_auc(EMB, position, real, fake) == pytest.approx(1.0)
    assert compatibility_auc(EMB, position, fake, real) == pytest.approx(0.0)


def test_style_agreement_at_k_uses_same_category_neighbours_only():
    rows = np.arange(6)
    categories = np.array(["top", "top", "top", "shoe", "shoe", "shoe"], dtype=object)
    styles = np.array(["a", "a", "b", "a", "b", "b"], dtype=object)
    emb = torch.tensor([[1.0, 0.0], [0.95, 0.05], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.1, 0.9]])
    # top 0 -> nearest top 1 (a: agree); top 2 -> nearest of {0, 1} is 1 (a: disagree);
    # shoe 4 -> 5 (b: agree). Queries 0, 2, 4.
    assert style_agreement_at_k(emb, rows, np.array([0, 2, 4]), categories, styles, k=1) == pytest.approx(2 / 3)
    unknown = np.array([""] * 6, dtype=object)
    assert np.isnan(style_agreement_at_k(emb, rows, rows, categories, unknown, k=1))
