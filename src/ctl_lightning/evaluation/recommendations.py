"""How often recommendations share the query's planted style (synthetic data only).

    python -m ctl_lightning.evaluation.recommendations RUN_DIR [--queries 200] [--k 5]

Queries are random test products; an item agrees when its planted style equals the query's. This is
the acceptance measure of the recommendation issue: the similar and complementary top-k, exactly as
``ctl-recommend`` returns them.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from ctl_lightning.errors import CtlError, friendly_errors
from ctl_lightning.retrieval.recommend import Recommender


def style_agreement(recommender: Recommender, queries: int = 200, k: int = 5, seed: int = 0) -> dict:
    table = recommender.table
    styles = table.styles
    candidates = np.flatnonzero((table.splits == "test") & (styles != ""))
    if len(candidates) == 0:
        raise CtlError(f"{recommender.dir}: no test product has a planted style; this measure needs synthetic data")
    chosen = np.random.default_rng(seed).choice(candidates, size=min(queries, len(candidates)), replace=False)
    similar, complementary = [], []
    for position in chosen:
        query = recommender.product_query(int(recommender.similar.row_ids[position]))
        for results, rec in (
            (similar, recommender.recommend_similar(query, k)),
            (complementary, recommender.recommend_complementary(query, k)),
        ):
            results.append(np.mean([styles[recommender.similar.position_of(i["row_id"])] == styles[position] for i in rec.items]))
    return {
        "queries": len(chosen),
        "k": k,
        "seed": seed,
        "similar_style_agreement": float(np.mean(similar)),
        "complementary_style_agreement": float(np.mean(complementary)),
        "chance": float(1.0 / len(np.unique(styles[styles != ""]))),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m ctl_lightning.evaluation.recommendations", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    with friendly_errors("recommendations"):
        print(json.dumps(style_agreement(Recommender(args.run_dir), args.queries, args.k, args.seed), indent=2))


if __name__ == "__main__":
    main()
