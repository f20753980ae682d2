"""Everything the Streamlit page does that does not need Streamlit.

Run discovery, argument and input parsing, queries from a typed product or an uploaded image, and
the one-line messages shown for bad input. The page (``streamlit_app.py``) only lays these out.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import traceback
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from ctl_lightning.data.formats.common import box_from_text
from ctl_lightning.errors import CtlError, user_error
from ctl_lightning.io import write_bytes_atomic

# Where ``make train`` (and eval.py) put their runs, relative to the folder they were started from.
RUN_PATTERNS = ("outputs/train/runs/*", "outputs/*/runs/*")
CATALOG_KINDS = ("similar", "compatible")
MAX_K = 20
INFER = "infer from the image"
UPLOAD_TYPES = ("png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff")
MAX_UPLOAD_BYTES = 50 * 1024 * 1024
KEPT_UPLOADS = 32  # the most recent uploads kept on disk; older ones are removed as new ones come


# --- the run to serve -------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The page's own arguments (after ``--`` on the ``streamlit run`` line); others are ignored."""
    parser = argparse.ArgumentParser(prog="streamlit run streamlit_app.py --", add_help=False)
    parser.add_argument("--run-dir", default=None, help="a run directory written by train.py or eval.py")
    parser.add_argument("--data-root", default=None, help="where the catalog's dataset folder is now, if it moved since the run")
    args, _ = parser.parse_known_args(list(argv))
    return args


def catalog_folder(path: str | Path) -> Path:
    """The ``catalogs`` folder of a run directory (a catalogs folder is accepted as it is)."""
    path = Path(path)
    return path if (path / "similar").is_dir() and not (path / "catalogs").is_dir() else path / "catalogs"


def has_catalogs(path: str | Path) -> bool:
    folder = catalog_folder(path)
    return all((folder / kind / "manifest.json").is_file() for kind in CATALOG_KINDS)


def catalog_stamp(path: str | Path) -> tuple[float, ...]:
    """Modification times of the catalog manifests: changes when a catalog is rebuilt in place."""
    folder = catalog_folder(path)
    return tuple((folder / kind / "manifest.json").stat().st_mtime for kind in CATALOG_KINDS)


def search_roots(cwd: str | Path | None = None) -> list[Path]:
    """The folder the app was started from, then the repository this file lives in."""
    roots = [Path.cwd() if cwd is None else Path(cwd)]
    repo = Path(__file__).resolve().parents[3]
    if (repo / "pyproject.toml").is_file():
        roots.append(repo)
    unique: list[Path] = []
    for root in roots:
        if root.resolve() not in [u.resolve() for u in unique]:
            unique.append(root)
    return unique


def find_runs(roots: Iterable[str | Path]) -> list[Path]:
    """Run directories with both catalogs under ``outputs/train/runs`` and ``outputs/*/runs``.

    Training runs come first (the app serves the latest ``make train`` by default), then the others;
    within each, the most recently written catalogs first.
    """
    found: dict[Path, Path] = {}
    for root in roots:
        for pattern in RUN_PATTERNS:
            for run in Path(root).glob(pattern):
                if run.is_dir() and has_catalogs(run):
                    found.setdefault(run.resolve(), run)
    return sorted(found.values(), key=lambda run: (run.parent.parent.name == "train", max(catalog_stamp(run)), run.name), reverse=True)


def latest_run(roots: Iterable[str | Path]) -> Path | None:
    runs = find_runs(roots)
    return runs[0] if runs else None


def resolve_run_dir(text: str | Path | None) -> Path:
    """The run directory the user named, or a one-line error saying what is wrong with it."""
    text = "" if text is None else str(text).strip()
    if not text:
        raise CtlError(
            "no run with catalogs found under outputs/train/runs or outputs/*/runs; "
            "run `make train` first, or type a run directory in the sidebar (or pass `make app RUN_DIR=...`)"
        )
    path = Path(text).expanduser()
    if not path.exists():
        raise CtlError(f"run directory {path} does not exist; type a run directory written by train.py or eval.py")
    if not path.is_dir():
        raise CtlError(f"{path} is a file, not a run directory")
    if not has_catalogs(path):
        raise CtlError(
            f"{path} has no catalogs (expected catalogs/similar and catalogs/compatible); "
            "pick a run that finished training, or rebuild its catalogs with eval.py"
        )
    return path


# --- what the user typed ----------------------------------------------------------------------------


def parse_product(text: str | None) -> str | None:
    """A product reference (row id or key) from a text box; ``None`` when the box is empty."""
    text = "" if text is None else str(text).strip()
    return text or None


def parse_k(value: object) -> int:
    try:
        k = int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise CtlError(f"k must be a whole number, got {value!r}") from None
    if not 1 <= k <= MAX_K:
        raise CtlError(f"k must be between 1 and {MAX_K}, got {k}")
    return k


def parse_box(text: str | None) -> tuple[float, float, float, float] | None:
    """An optional normalized ``x,y,w,h`` crop box of an uploaded image."""
    return box_from_text(text, what="crop box")


def random_product(recommender, rng: np.random.Generator | None = None) -> int:
    """The row id of a product drawn uniformly from the catalog."""
    rng = rng or np.random.default_rng()
    row_ids = recommender.similar.row_ids
    return int(row_ids[int(rng.integers(len(row_ids)))])


# --- uploaded images --------------------------------------------------------------------------------


def _safe_name(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name or "upload").name).strip("._") or "upload"
    return stem[-80:]


def save_upload(name: str, data: bytes, folder: str | Path) -> Path:
    """Write an upload to ``folder/<content hash>/<name>`` (the same file on every rerun) and return it.

    Streamlit reruns the page on every widget change, so the file must outlive one query; only the
    ``KEPT_UPLOADS`` most recently used uploads stay, so a long-running app does not fill the disk.
    """
    if not data:
        raise CtlError(f"the uploaded file {name!r} is empty")
    if len(data) > MAX_UPLOAD_BYTES:
        raise CtlError(f"the uploaded file {name!r} is larger than {MAX_UPLOAD_BYTES // 2**20} MB")
    path = Path(folder) / hashlib.sha256(data).hexdigest()[:16] / _safe_name(name)
    if not path.is_file() or path.read_bytes() != data:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, data)
    os.utime(path.parent)  # marks it as just used
    _remove_old_uploads(Path(folder), keep=path.parent)
    return path


def _remove_old_uploads(folder: Path, keep: Path) -> None:
    def last_used(entry: Path) -> float:
        try:
            return entry.stat().st_mtime
        except FileNotFoundError:  # removed meanwhile by another session
            return 0.0

    uploads = sorted((entry for entry in folder.iterdir() if entry.is_dir() and entry != keep), key=last_used, reverse=True)
    for old in uploads[KEPT_UPLOADS - 1 :]:
        shutil.rmtree(old, ignore_errors=True)


def upload_query(recommender, name: str, data: bytes, folder: str | Path, category: str | None = None, box=None):
    """A query from an uploaded image; errors name the upload, not the temporary file it was saved as."""
    from PIL import Image

    from ctl_lightning.retrieval.embedder import open_image

    path = save_upload(name, data, folder)
    try:
        open_image(path)  # a corrupt or unsupported file fails here, before the model is loaded
    except CtlError as error:
        detail = str(error).replace(f"cannot read image {path}: ", "").replace(str(path), name)
        raise CtlError(
            f"cannot read the uploaded file {name!r} as an image ({detail}); upload a PNG, JPEG, WebP, BMP, GIF or TIFF picture"
        ) from None
    except Image.DecompressionBombError:
        raise CtlError(f"the uploaded image {name!r} has too many pixels to be a product photo") from None
    return recommender.image_query(path, category, box)


# --- results and messages ---------------------------------------------------------------------------


def query_caption(query: dict) -> str:
    inferred = query.get("inferred_category")
    if inferred:
        return f"query · {query['category']} (inferred, {inferred['confidence']:.0%})"
    return f"query · {query['category']}" + (f" · row {query['row_id']}" if query.get("row_id") is not None else "")


def item_caption(item: dict) -> str:
    return f"#{item['rank']} {item['category']} · {item['score']:.3f} · row {item['row_id']}"


def framed(image, width: int = 4, colour: tuple[int, int, int] = (200, 30, 45)):
    """The query's tile with a coloured frame, so it stands apart from the recommendations."""
    from PIL import ImageOps

    return ImageOps.expand(image.convert("RGB"), border=width, fill=colour)


def catalog_summary(recommender) -> dict:
    manifest = recommender.similar.manifest
    categories = sorted(recommender.index["similar"].partitions)
    subspaces = recommender.compatible.subspaces
    return {
        "products": len(recommender),
        "complementary_search": "one space"
        if subspaces is None
        else f"{subspaces.kind} subspaces of {len(subspaces.pairs)} category pairs",
        "categories": categories,
        "backbone": manifest.get("model", {}).get("backbone"),
        "created": manifest.get("created"),
        "store": str(recommender.store_path() or ""),
    }


def error_message(error: BaseException) -> str:
    """One line for the page: the user-fixable message when there is one, else the error's first line."""
    cause = user_error(error)
    if cause is not None:
        return str(cause)
    text = str(error).strip().splitlines()
    first = text[0] if text else ""
    return f"unexpected error ({type(error).__name__}{': ' + first[:300] if first else ''}); the server log has the details"


def log_unexpected(error: BaseException) -> None:
    """Tracebacks go to the server's console, never to the page."""
    if user_error(error) is None:
        traceback.print_exception(type(error), error, error.__traceback__)
