"""A CTL folder at the real release's scale (about 107,000 outfits, 480,000 products), for timing.

Drawing 480,000 synthetic products would take longer than every measurement it serves, so the
seed-scale world is listed ``copies`` times: copy ``k`` of outfit ``s`` is the scene ``s~k``, whose
image is a link to ``s``'s. Every copy is its own outfit and its products their own rows, decoded
from their own file by the product store, sampled into triplets and written to catalogs like any
other, through the CTL reader itself. Only the pixels repeat, so the figures measured on it are
times and memory, never accuracy.
"""

from __future__ import annotations

import os
from pathlib import Path

from ctl_lightning.io import replace_dir

ANNOTATIONS = ("raw_train.tsv", "raw_test.tsv")


def replicate_ctl(seed_root: Path, out: Path, copies: int) -> Path:
    """``seed_root``'s CTL annotations listed ``copies`` times under ``out`` (images linked, not copied)."""
    seed_root, out = Path(seed_root), Path(out)
    done = out / ".complete"
    if done.is_file() and done.read_text() == f"{seed_root.resolve()} x{copies}":
        return out
    tmp = out.with_name(out.name + ".tmp")
    (tmp / "images").mkdir(parents=True, exist_ok=True)
    signatures: set[str] = set()
    for name in ANNOTATIONS:
        header, *lines = (seed_root / name).read_text().splitlines()
        rows = [line.split("\t", 1) for line in lines if line]
        signatures.update(signature for signature, _ in rows)
        body = [f"{signature}~{k}\t{rest}" for k in range(copies) for signature, rest in rows]
        (tmp / name).write_text("\n".join([header, *body]) + "\n")
    images = (seed_root / "images").resolve()
    for signature in signatures:
        for k in range(copies):
            link = tmp / "images" / f"{signature}~{k}.jpg"
            if not link.is_symlink():
                os.symlink(images / f"{signature}.jpg", link)
    (tmp / ".complete").write_text(f"{seed_root.resolve()} x{copies}")
    replace_dir(tmp, out)
    return out
