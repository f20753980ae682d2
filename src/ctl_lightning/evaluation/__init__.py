"""Metrics shared by training, the baseline, the synthetic-data report and the recommendation checks."""
