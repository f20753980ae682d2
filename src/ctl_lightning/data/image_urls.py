"""Which images a dataset folder needs, where each one is served and where it is saved.

CTL names one outfit collage per signature; STL names a scene photo and a product shot per row. The
datasets' READMEs give the public address of signature ``s`` as
``http://i.pinimg.com/400x/{s[0:2]}/{s[2:4]}/{s[4:6]}/{s}.jpg``; ``base_url`` replaces the part before
``/{s[0:2]}`` so that a mirror (or a test server) with the same layout can be used instead.
Images are saved where :mod:`ctl_lightning.data.sources` reads them: CTL ``images/<s>.jpg``, STL
``products/<s>.jpg`` and ``scenes/<s>.jpg``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ctl_lightning.data.formats import (
    read_ctl_fitb,
    read_ctl_raw,
    read_ctl_triplets,
    read_stl_products,
)
from ctl_lightning.data.formats.common import read_text_lines
from ctl_lightning.errors import CtlError, DataFormatError

PINIMG_BASE_URL = "http://i.pinimg.com/400x"
# Optional CTL files whose items also name collages (the real dataset's triplets and FITB questions).
CTL_EXTRA_PATTERNS = ("*triplet*.tsv", "*fitb*.json")


@dataclass(frozen=True)
class ImageTarget:
    """One image to fetch: ``url`` is saved as ``path``."""

    url: str
    path: Path


def check_base_url(base_url: str) -> str:
    """The base URL without its trailing slash; anything but http(s) is a one-line error."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise CtlError(f"--base-url must be an http:// or https:// URL, got {base_url!r}")
    return base_url.rstrip("/")


def signature_url(base_url: str, signature: str) -> str:
    s = signature.removesuffix(".jpg")
    return f"{base_url}/{s[0:2]}/{s[2:4]}/{s[4:6]}/{s}.jpg"


def _by_signature(signatures: Iterable[str], base_url: str, folder: Path) -> list[ImageTarget]:
    """One target per distinct signature, in order of first appearance.

    A signature becomes a file name, so one that is not a plain name (``../x``, ``a/b``, a hidden
    name) is refused: a hostile annotation file must not write outside ``folder``.
    """
    base_url = check_base_url(base_url)
    unique = dict.fromkeys(s.removesuffix(".jpg") for s in signatures)
    for s in unique:
        if not s or s.startswith(".") or "/" in s or "\\" in s:
            raise CtlError(f"signature {s!r} is not a plain file name; refusing to write it under {folder}")
    return [ImageTarget(signature_url(base_url, s), folder / f"{s}.jpg") for s in unique]


def ctl_targets(folder: Path, base_url: str = PINIMG_BASE_URL, on_error: str = "raise") -> list[ImageTarget]:
    """The collages of ``raw_train.tsv``, ``raw_test.tsv`` and any triplet or FITB file beside them."""
    signatures: list[str] = []
    for name in ("raw_train.tsv", "raw_test.tsv"):
        if (folder / name).is_file():
            signatures += [item.signature for item in read_ctl_raw(folder / name, on_error).records]
    for pattern in CTL_EXTRA_PATTERNS:
        for path in sorted(folder.glob(pattern)):
            if path.suffix == ".tsv":
                signatures += [item.signature for triplet in read_ctl_triplets(path, on_error).records for item in triplet]
            else:
                signatures += [item.signature for q in read_ctl_fitb(path, on_error).records for item in q.question + q.answers]
    return _by_signature(signatures, base_url, folder / "images")


def stl_targets(folder: Path, base_url: str = PINIMG_BASE_URL, on_error: str = "raise") -> list[ImageTarget]:
    """The product shots and the scene photos of ``fashion.json``, products first (training needs them)."""
    pairs = read_stl_products(folder / "fashion.json", on_error).records
    return _by_signature((p.product for p in pairs), base_url, folder / "products") + _by_signature(
        (p.scene for p in pairs), base_url, folder / "scenes"
    )


def url_list_targets(path: Path, folder: Path) -> list[ImageTarget]:
    """``--from-urls``: one URL per line (``#`` comments allowed), each saved under its file name.

    A name starting with a dot is refused: ``..`` would leave ``folder``, and hidden names are those of
    temporary files.
    """
    targets: dict[str, ImageTarget] = {}
    lines: dict[str, int] = {}
    for number, text in read_text_lines(path):
        url = text.strip()
        if url.startswith("#"):
            continue
        parts = urlsplit(url)
        name = Path(unquote(parts.path)).name
        if parts.scheme not in ("http", "https") or not parts.netloc or not name or name.startswith("."):
            raise DataFormatError(path, number, f"expected an http(s) URL ending in a file name, got {url!r}")
        if name in targets and targets[name].url != url:
            raise DataFormatError(path, number, f"{url} would overwrite {targets[name].url} (line {lines[name]}): both are named {name}")
        targets.setdefault(name, ImageTarget(url, folder / name))
        lines.setdefault(name, number)
    if not targets:
        raise DataFormatError(path, None, "no URL in the file")
    return list(targets.values())
