"""Streamlit page: similar and complementary products from a run's catalogs.

    make app                         # the newest run under outputs/train/runs (or outputs/*/runs)
    make app RUN_DIR=outputs/train/runs/<time>
    python -m streamlit run src/ctl_lightning/app/streamlit_app.py -- --run-dir RUN_DIR [--data-root DATA]

Pick a product by row id or key, at random, or upload your own picture; the page shows the products
that look like it (same category) and those that go with it (other categories). Bad input is shown
as a one-line message on the page, never as a stack trace.

Elements carry stable keys (``st-key-<key>`` CSS classes) for the browser test: ``run_dir``,
``query_mode``, ``product``, ``random``, ``upload``, ``category``, ``box``, ``k``, ``per_category``,
and the containers ``app-error``, ``query-info``, ``similar-grid``, ``complementary-grid``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import streamlit as st

from ctl_lightning.app import logic
from ctl_lightning.retrieval.recommend import Recommendation, Recommender
from ctl_lightning.retrieval.render import Thumbnails

PRODUCT, UPLOAD = "Product id or key", "Upload an image"
UPLOAD_DIR = Path(tempfile.gettempdir()) / "ctl-lightning-app-uploads"
TILE_WIDTH = 150


@st.cache_resource(show_spinner="Loading catalogs…", max_entries=4)
def load_recommender(run_dir: str, stamp: tuple[float, ...], data_root: str | None = None) -> Recommender:
    """Both catalogs of a run, loaded once per (run, catalog version, data root) for all sessions."""
    del stamp  # part of the cache key only: a rebuilt catalog is loaded again
    return Recommender(run_dir, data_root=data_root)


@st.cache_resource(show_spinner=False, max_entries=4)
def load_thumbnails(store: str) -> Thumbnails:
    return Thumbnails(store)


def show_error(error: BaseException | str) -> None:
    if isinstance(error, BaseException):
        logic.log_unexpected(error)
        error = logic.error_message(error)
    with st.container(key="app-error"):
        st.error(error, icon="⚠️")


def pick_random(recommender: Recommender) -> None:
    st.session_state["query_mode"] = PRODUCT
    st.session_state["product"] = str(logic.random_product(recommender))


def sidebar(default_run: str) -> tuple[str, int, int]:
    with st.sidebar:
        st.header("Catalogs")
        run_text = st.text_input(
            "Run directory", value=default_run, key="run_dir", help="a run folder written by train.py or eval.py (it has catalogs/)"
        )
        st.header("Results")
        k = st.slider("k: items per grid", min_value=1, max_value=logic.MAX_K, value=5, key="k")
        per_category = st.number_input(
            "Complementary: items per other category",
            min_value=0,
            max_value=logic.MAX_K,
            value=1,
            step=1,
            key="per_category",
            help="1: the best item of each other category, as the seed did; 0: a plain top-k",
        )
    return run_text, int(k), int(per_category)


def choose_query(recommender: Recommender, categories: list[str]):
    """The query the user asked for, or None while there is none yet."""
    mode = st.radio("Query by", (PRODUCT, UPLOAD), horizontal=True, key="query_mode")
    if mode == PRODUCT:
        left, right = st.columns([4, 1], vertical_alignment="bottom")
        with left:
            text = st.text_input("Product: row id or key", key="product", placeholder="e.g. 42, or signature@x,y,w,h")
        with right:
            st.button("Random product", key="random", on_click=pick_random, args=(recommender,), width="stretch")
        product = logic.parse_product(text)
        if product is None:
            st.info("Type a row id or a product key and press Enter, or press **Random product**.")
            return None
        return recommender.product_query(product)

    left, middle, right = st.columns([3, 2, 2])
    with left:
        upload = st.file_uploader("Your own image", key="upload", max_upload_size=logic.MAX_UPLOAD_BYTES // 2**20)
    with middle:
        category = st.selectbox("Category", [logic.INFER, *categories], key="category")
    with right:
        box = st.text_input("Crop box (optional)", key="box", placeholder="x,y,w,h in 0..1")
    if upload is None:
        st.info("Upload a picture of a product (or a photo with several items and a crop box).")
        return None
    return logic.upload_query(
        recommender, upload.name, upload.getvalue(), UPLOAD_DIR, None if category == logic.INFER else category, logic.parse_box(box)
    )


def show_query(query) -> None:
    with st.container(key="query-info"):
        described = query.describe()
        inferred = described.get("inferred_category")
        if inferred:
            st.success(f"Inferred category: **{inferred['category']}** (confidence {inferred['confidence']:.0%})")
        elif described.get("row_id") is not None:
            st.caption(f"Query: row {described['row_id']} · {described['category']} · `{described['key']}`")


def show_grid(result: Recommendation, thumbnails: Thumbnails, title: str) -> None:
    with st.container(key=f"{result.mode}-grid", border=True):
        st.subheader(title)
        if not result.items:
            st.info("No recommendations: the catalog has no other product to offer for this query.")
            return
        columns = st.columns(len(result.items) + 1)
        with columns[0]:
            st.image(logic.framed(thumbnails.get(result.query)), caption=logic.query_caption(result.query), width=TILE_WIDTH)
        for column, item in zip(columns[1:], result.items):
            with column:
                st.image(thumbnails.get(item), caption=logic.item_caption(item), width=TILE_WIDTH)
        with st.expander("Details (JSON)"):
            st.json(result.to_json(), expanded=False)


def main() -> None:
    st.set_page_config(page_title="ctl-lightning recommendations", page_icon="👗", layout="wide")
    st.title("Similar and complementary products")
    args = logic.parse_args(sys.argv[1:])
    default_run = args.run_dir or logic.latest_run(logic.search_roots())
    run_text, k, per_category = sidebar("" if default_run is None else str(default_run))
    try:
        run_dir = logic.resolve_run_dir(run_text)
        recommender = load_recommender(str(run_dir.resolve()), logic.catalog_stamp(run_dir), args.data_root)
    except Exception as error:
        show_error(error)
        return
    summary = logic.catalog_summary(recommender)
    with st.sidebar:
        st.caption(
            f"{summary['products']} products in {len(summary['categories'])} categories · "
            f"{summary['backbone']} · complementary search in {summary['complementary_search']} · "
            f"catalogs of {summary['created']}"
        )
    try:
        query = choose_query(recommender, summary["categories"])
        if query is None:
            return
        show_query(query)
        similar = recommender.recommend_similar(query, logic.parse_k(k))
        complementary = recommender.recommend_complementary(query, logic.parse_k(k), per_category)
    except Exception as error:
        show_error(error)
        return
    thumbnails = load_thumbnails(str(summary["store"] or ""))
    show_grid(similar, thumbnails, "Similar: looks like it (same category)")
    show_grid(complementary, thumbnails, "Complementary: goes with it (other categories)")


main()
