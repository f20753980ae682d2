"""``--index`` and ``--index-param``: the index options ctl-recommend and ctl-serve share (here, since nothing imports cli/)."""

from __future__ import annotations

import argparse

from ctl_lightning.retrieval.index import BUILD_SETTINGS, INDEX_KINDS, SEARCH_SETTINGS, IndexSettings


def add_index_options(parser: argparse.ArgumentParser) -> None:
    names = dict.fromkeys(("exact_below", *(n for kind in BUILD_SETTINGS for n in (*BUILD_SETTINGS[kind], *SEARCH_SETTINGS[kind]))))
    parser.add_argument(
        "--index",
        "--engine",  # its former name, when exact and faiss were the only kinds
        dest="index",
        choices=INDEX_KINDS,
        default="exact",
        help="exact and faiss (faiss's IndexFlatIP) search exactly, and auto with whichever of them answers a "
        "query faster on this catalog and CPU (timed at start-up); ivf and hnsw approximately, per category, "
        "from an index saved beside the catalog on first use (default: exact)",
    )
    parser.add_argument(
        "--index-param",
        action="append",
        metavar="NAME=VALUE",
        help=f"a setting of the ivf or hnsw index, repeated for several: {', '.join(names)} (README: Approximate indexes)",
    )


def index_settings(args: argparse.Namespace) -> IndexSettings:
    """The settings the options give; a one-line error for a setting the kind does not have."""
    return IndexSettings.parse(args.index, args.index_param)
