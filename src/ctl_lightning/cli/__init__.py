"""Command-line entry points: ctl-data and ctl-recommend."""
