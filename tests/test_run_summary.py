"""The run's closing table: a gain of zero is a result, "same features" only where it is by construction."""

from __future__ import annotations

from ctl_lightning.run_summary import print_metric_table


def test_equal_values_read_as_same_features_only_for_similar_products(capsys):
    metrics = {
        "test/triplet_accuracy": 0.6,
        "baseline/triplet_accuracy": 0.6,
        "test/similar_style_at5": 0.25,
        "baseline/similar_style_at5": 0.25,
    }
    print_metric_table(metrics, ["triplet_accuracy", "similar_style_at5"])
    rows = {line.split("│")[1].strip(): line for line in capsys.readouterr().out.splitlines() if line.count("│") > 3}
    assert "+0.0000" in rows["held-out triplet accuracy"] and "same features" not in rows["held-out triplet accuracy"]
    assert "same features" in rows["similar products: style agreement@5"]
