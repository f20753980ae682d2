"""Per-category counts of any CTL or STL annotation file, and the splits of a Polyvore Outfits folder
(``ctl-data stats``).

They reproduce the paper's Table 1 (STL ``fashion-cat.json``) and Table 2 (CTL products) from the
annotation files themselves, and Polyvore's outfit and item counts per split (docs/DESIGN.md section 2).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ctl_lightning.data.formats.common import ParseResult, read_text_lines
from ctl_lightning.data.formats.ctl import (
    read_ctl_fitb,
    read_ctl_raw,
    read_ctl_triplets,
)
from ctl_lightning.data.formats.polyvore import (
    METADATA_FILE,
    PARTS,
    SPLITS,
    read_polyvore_split,
)
from ctl_lightning.data.formats.stl import read_stl_categories, read_stl_products
from ctl_lightning.errors import DataFormatError


@dataclass
class FileStats:
    kind: str
    counts: Counter
    totals: dict[str, int] = field(default_factory=dict)
    skipped: str = ""


def detect_kind(path: Path) -> str:
    """ctl-raw, ctl-triplets, ctl-fitb, stl-products or stl-categories, from the file's first line."""
    first = next(read_text_lines(path), (0, ""))[1]
    if not first.strip():
        raise DataFormatError(path, None, "file is empty")
    stripped = first.lstrip()
    if stripped.startswith("["):
        return "ctl-fitb"
    if stripped.startswith("{"):
        return "stl-products" if '"bbox"' in first or '"scene"' in first else "stl-categories"
    fields = len(first.split("\t"))
    if stripped.lower().startswith("image_signature"):
        lines = read_text_lines(path)
        next(lines)
        data = next(lines, None)
        if data is None:
            raise DataFormatError(path, None, "file has a header but no data rows")
        fields = len(data[1].split("\t"))
    if fields == 18:
        return "ctl-triplets"
    if fields == 6:
        return "ctl-raw"
    raise DataFormatError(path, 1, f"cannot tell the format: {fields} tab-separated fields is neither CTL raw (6) nor triplets (18)")


def file_stats(path: str | Path, on_error: str = "raise") -> FileStats:
    path = Path(path)
    kind = detect_kind(path)
    result: ParseResult
    if kind == "ctl-raw":
        result = read_ctl_raw(path, on_error)
        counts = Counter(item.label for item in result.records)
        totals = {"products": len(result.records), "outfits": len({i.signature for i in result.records}), "labels": len(counts)}
    elif kind == "ctl-triplets":
        result = read_ctl_triplets(path, on_error)
        counts = Counter(t[1].label for t in result.records)  # the positive's (= negative's) category
        totals = {"triplets": len(result.records), "labels": len(counts)}
    elif kind == "ctl-fitb":
        result = read_ctl_fitb(path, on_error)
        counts = Counter(q.answers[0].label for q in result.records)  # the blank's category
        totals = {"questions": len(result.records), "labels": len(counts)}
    elif kind == "stl-products":
        result = read_stl_products(path, on_error)
        categories_file = path.with_name("fashion-cat.json")
        category_of = dict(read_stl_categories(categories_file).records) if categories_file.is_file() else {}
        products = {p.product for p in result.records}
        counts = Counter(category_of.get(p, "(no category file)") for p in products)
        totals = {"pairs": len(result.records), "products": len(products), "scenes": len({p.scene for p in result.records})}
    else:
        result = read_stl_categories(path, on_error)
        counts = Counter(category for _, category in result.records)
        totals = {"products": len(result.records), "categories": len(counts)}
    return FileStats(kind, counts, totals, result.skip_summary())


@dataclass
class PolyvoreStats:
    parts: list[dict]  # split, part (train, valid, test, all), outfits, items (distinct), categories
    categories: dict[str, Counter]  # split -> distinct items per category, all parts together
    questions: dict[str, dict[str, int]]  # split -> counts of its test question files
    skipped: list[str]


def polyvore_stats(folder: str | Path, on_error: str = "raise") -> PolyvoreStats:
    """Outfits, items and categories per part of each split found in a ``polyvore_outfits`` folder."""
    folder = Path(folder)
    if not (folder / METADATA_FILE).is_file():
        raise DataFormatError(folder / METADATA_FILE, None, "file not found; a Polyvore Outfits folder holds it")
    stats = PolyvoreStats([], {}, {}, [])
    for split in (s for s in SPLITS if (folder / s).is_dir()):
        data = read_polyvore_split(folder, split, on_error)
        items = {}
        for part in PARTS:
            in_part = {item.item_id: item.category for outfit in data.outfits[part] for item in outfit.items}
            stats.parts.append(
                {
                    "split": split,
                    "part": part,
                    "outfits": len(data.outfits[part]),
                    "items": len(in_part),
                    "categories": len(set(in_part.values())),
                }
            )
            items.update(in_part)
        stats.parts.append(
            {
                "split": split,
                "part": "all",
                "outfits": sum(len(data.outfits[part]) for part in PARTS),
                "items": len(items),
                "categories": len(set(items.values())),
            }
        )
        stats.categories[split] = Counter(items.values())
        labels = Counter(q.label for q in data.compatibility)
        stats.questions[split] = {"real outfits": labels[1], "fake outfits": labels[0], "FITB questions": len(data.fitb)}
        stats.skipped += [result.skip_summary() for result in data.results if result.skipped]
    if not stats.parts:
        raise DataFormatError(folder, None, f"has neither {' nor '.join(SPLITS)}/")
    return stats
