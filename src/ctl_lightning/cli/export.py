"""``ctl-export``: a run's image embedder in a portable form.

    ctl-export onnx RUN_DIR

Writes RUN_DIR/export/embedder.onnx (the backbone and the head of the checkpoint that made the run's
catalogs, preprocessing included: it takes the store's uint8 crops) and RUN_DIR/export/embedder.json
(its input, outputs, preprocessing and the weights' fingerprint), then checks that onnxruntime and
torch embed the run's own store crops alike. ctl-serve uses the export when it is there.
"""

from __future__ import annotations

import argparse

import numpy as np

from ctl_lightning.errors import CtlError, friendly_errors

CHECK_CROPS = 64
TOLERANCE = 1e-3  # the largest difference of any embedding coordinate accepted (typically about 1e-6)


def check_crops(recommender, size: int) -> tuple[np.ndarray, str]:
    """Up to CHECK_CROPS of the run's store crops, or seeded noise when the store is not there."""
    from ctl_lightning.retrieval.render import Thumbnails

    store = Thumbnails.of(recommender).store
    if store is not None and store.size == size:
        rows = np.linspace(0, len(store) - 1, min(CHECK_CROPS, len(store))).astype(np.int64)
        return store.read(rows), f"{len(rows)} store crops"
    return np.random.default_rng(0).integers(0, 256, (8, size, size, 3), dtype=np.uint8), "8 noise crops (the store is not there)"


def onnx(run_dir: str) -> None:
    from ctl_lightning.retrieval.onnx_embedder import export_onnx, exported_embedder
    from ctl_lightning.retrieval.recommend import Recommender

    folder = export_onnx(run_dir)
    recommender = Recommender(run_dir)
    exported, problem = exported_embedder(recommender.compatible, recommender.dir)
    if exported is None:
        raise CtlError(problem)
    crops, what = check_crops(recommender, exported.image_size)
    differences = [np.abs(a - b).max() for a, b in zip(exported.embed_crops(crops), recommender.embedder().embed_crops(crops))]
    difference = float(max(differences))
    if not difference <= TOLERANCE:
        raise CtlError(f"{folder}: onnxruntime and torch embeddings differ by up to {difference:.2e} on {what}; the export is not usable")
    print(f"wrote {folder / 'embedder.onnx'} and {folder / 'embedder.json'}")
    print(f"onnxruntime and torch agree on {what}: largest difference {difference:.1e}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ctl-export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="format", required=True)
    o = sub.add_parser("onnx", help="the image embedder as ONNX, for onnxruntime")
    o.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by train.py or eval.py")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    with friendly_errors("ctl-export"):
        onnx(args.run_dir)


if __name__ == "__main__":
    main()
