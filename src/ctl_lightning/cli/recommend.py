"""``ctl-recommend``: similar or complementary products from a run's catalogs.

    ctl-recommend similar --catalog RUN_DIR --product ID --k 5 --out OUT
    ctl-recommend complementary --catalog RUN_DIR --image photo.jpg --out OUT

Writes OUT/recommendations.json (query and ranked items with scores, categories, row ids and image
paths) and OUT/recommendations.png (the query and its items).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ctl_lightning.allocator import keep_freed_memory
from ctl_lightning.data.formats.common import box_from_text
from ctl_lightning.errors import friendly_errors
from ctl_lightning.io import write_json
from ctl_lightning.retrieval.index_options import add_index_options, index_settings


def run(args: argparse.Namespace) -> Path:
    from ctl_lightning.retrieval.recommend import Recommender
    from ctl_lightning.retrieval.render import Thumbnails, render_recommendations
    from ctl_lightning.retrieval.schema import document_json, recommendations_document

    recommender = Recommender(args.catalog, index=index_settings(args), data_root=args.data_root)
    if args.image:
        query = recommender.image_query(args.image, args.category, box_from_text(args.box, what="--box"))
    else:
        query = recommender.product_query(args.product)
    if args.mode == "similar":
        result = recommender.recommend_similar(query, args.k)
    else:
        result = recommender.recommend_complementary(query, args.k, args.per_category)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    payload = document_json(recommendations_document(result, str(recommender.dir.resolve()), recommender.index_description()))
    write_json(out / "recommendations.json", payload)
    thumbnails = Thumbnails.of(recommender)
    if thumbnails.problem:
        print(f"ctl-recommend: warning: pictures cropped from the source images instead: {thumbnails.problem}", file=sys.stderr)
    render_recommendations([result], thumbnails, out / "recommendations.png")
    if summary := recommender.index_summary():
        print(f"ctl-recommend: {summary}", file=sys.stderr)
    inferred = result.query.get("inferred_category")
    if inferred:
        print(f"inferred category: {inferred['category']} (confidence {inferred['confidence']:.0%})")
    for item in result.items:
        print(f"{item['rank']:>2}. {item['score']:.4f}  {item['category']:<22} row {item['row_id']}  {item['key']}")
    print(f"wrote {out / 'recommendations.json'} and {out / 'recommendations.png'}")
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ctl-recommend", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    for mode, text in (("similar", "same category, similar look"), ("complementary", "other categories that go with it")):
        s = sub.add_parser(mode, help=text)
        s.add_argument("--catalog", required=True, help="a run directory (or its catalogs/ folder)")
        what = s.add_mutually_exclusive_group(required=True)
        what.add_argument("--product", help="a row id or a product key (signature@x,y,w,h)")
        what.add_argument("--image", help="your own image, embedded with the catalog's model")
        s.add_argument("--box", help="with --image: normalized x,y,w,h of the item to use")
        s.add_argument("--category", help="with --image: the query's category (default: inferred)")
        s.add_argument("--k", type=int, default=5)
        s.add_argument("--out", default="recommendations", help="output folder")
        add_index_options(s)
        s.add_argument("--data-root", help="where the catalog's dataset folder is now, if it moved since the run")
        if mode == "complementary":
            s.add_argument("--per-category", type=int, default=1, help="items per other category; 0: plain top-k")
    return p


def main(argv: list[str] | None = None) -> None:
    keep_freed_memory()
    args = parser().parse_args(argv)
    with friendly_errors("ctl-recommend"):
        run(args)


if __name__ == "__main__":
    main()
