"""``ctl-data``: generate the synthetic dataset, fetch real images, build product stores, count categories.

ctl-data synth --out DIR [--seed N] [--outfits N]
ctl-data download DIR [--limit N] [--rate 10] [--base-url URL] [--from-urls FILE]
ctl-data prepare DIR [--size 64] [--on-error skip]
ctl-data stats PATH               (a CTL/STL file, or a polyvore_outfits folder)
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ctl_lightning.allocator import keep_freed_memory
from ctl_lightning.data.image_urls import PINIMG_BASE_URL
from ctl_lightning.errors import CtlError, friendly_errors


def _synth(args: argparse.Namespace) -> None:
    from ctl_lightning.data.synthetic import SynthConfig, generate

    out = generate(
        SynthConfig(
            out=Path(args.out),
            seed=args.seed,
            outfits=args.outfits,
            styles=args.styles,
            scenes=args.scenes,
            world=args.world,
            split=args.split,
            layout=args.layout,
            render=not args.annotations_only,
        )
    )
    if args.layout == "polyvore":
        print(f"synthetic dataset written to {out} (Polyvore Outfits, both splits, in {out / 'polyvore_outfits'})")
    else:
        print(f"synthetic dataset written to {out} (CTL in {out / 'ctl'}, STL in {out / 'stl'})")


def _kind_of(folder: Path, kind: str) -> str:
    """``ctl`` or ``stl``: as given, or told by the annotation files in ``folder``."""
    if kind != "auto":
        return kind
    if (folder / "raw_train.tsv").is_file() or (folder / "raw_test.tsv").is_file():
        return "ctl"
    if (folder / "fashion.json").is_file():
        return "stl"
    raise CtlError(f"{folder}: neither raw_train.tsv/raw_test.tsv (CTL) nor fashion.json (STL) found; pass --kind")


def _source_for(folder: Path, kind: str, on_error: str, store_dir: str | None):
    from ctl_lightning.data.sources import CtlSource, StlSource

    if _kind_of(folder, kind) == "stl":
        return StlSource(folder, on_error=on_error, store_dir=store_dir)
    train = "raw_train.tsv" if (folder / "raw_train.tsv").is_file() else "raw_test.tsv"
    test = "raw_test.tsv" if train == "raw_train.tsv" and (folder / "raw_test.tsv").is_file() else None
    return CtlSource(folder, train_file=train, test_file=test, on_error=on_error, store_dir=store_dir)


def _prepare(args: argparse.Namespace) -> None:
    source = _source_for(Path(args.folder), args.kind, args.on_error, args.store_dir)
    store = source.open_store(args.size, workers=args.workers)
    from ctl_lightning.data.store import BuildStats

    stats = BuildStats(**store.manifest["report"])
    print(f"product store {store.path}: {len(store)} products, {store.size} px, fingerprint {store.fingerprint}")
    for line in stats.lines()[1:]:
        print(line)


def _download(args: argparse.Namespace) -> None:
    from ctl_lightning.data import image_urls
    from ctl_lightning.data.download import FetchSettings, download

    folder = Path(args.folder)
    if args.from_urls:
        targets = image_urls.url_list_targets(Path(args.from_urls), folder / "images")
    elif _kind_of(folder, args.kind) == "stl":
        targets = image_urls.stl_targets(folder, args.base_url, args.on_error)
    else:
        targets = image_urls.ctl_targets(folder, args.base_url, args.on_error)
    settings = FetchSettings(
        concurrency=args.concurrency, rate=args.rate, timeout=args.timeout, retries=args.retries, backoff=args.backoff, verify=args.verify
    )
    try:
        report = download(targets[: args.limit], settings)
    except KeyboardInterrupt:
        raise CtlError("interrupted; the images fetched so far are kept whole, and a rerun fetches the rest") from None
    report.save(folder / "download_report.json")
    table = Table(title=f"{folder}: {report.total:,} images")
    table.add_column("")
    table.add_column("count", justify="right")
    for row in report.rows():
        table.add_row(*row)
    Console().print(table)
    lost = len(report.failed) + len(report.missing)
    if lost:
        print(
            f"{lost:,} images did not arrive, each listed with its last error in {folder / 'download_report.json'}; "
            "a rerun retries them, and `ctl-data prepare` leaves their products out"
        )


def _at_least(minimum: float, kind: type = int):
    """An argparse type: a number of ``kind`` no smaller than ``minimum``."""

    def parse(text: str):
        value = kind(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {text}")
        return value

    return parse


def _print_skips(console: Console, summaries: list[str]) -> None:
    # One unbroken line each, as printed, so that it can be grepped; paths are not rich markup.
    for summary in summaries:
        console.print(summary, soft_wrap=True, markup=False, highlight=False)


def _polyvore_stats(folder: Path, on_error: str) -> None:
    from ctl_lightning.data.formats.stats import polyvore_stats

    stats = polyvore_stats(folder, on_error)
    table = Table(title=f"{folder} (Polyvore Outfits)")
    for column in ("split", "part", "outfits", "items", "categories"):
        table.add_column(column, justify="left" if column in ("split", "part") else "right")
    for row in stats.parts:
        table.add_row(*(f"{v:,}" if isinstance(v, int) else v for v in row.values()), end_section=row["part"] == "all")
    console = Console()
    console.print(table)
    categories = Table(title="items per category")
    categories.add_column("category")
    for split in stats.categories:
        categories.add_column(split, justify="right")
    for category in sorted(set().union(*stats.categories.values())):
        categories.add_row(category, *(f"{counts[category]:,}" for counts in stats.categories.values()))
    console.print(categories)
    for split, counts in stats.questions.items():
        console.print(f"{split} test questions: " + ", ".join(f"{k}: {v:,}" for k, v in counts.items()), soft_wrap=True)
    _print_skips(console, stats.skipped)


def _stats(args: argparse.Namespace) -> None:
    from ctl_lightning.data.formats.stats import file_stats

    if Path(args.path).is_dir():
        return _polyvore_stats(Path(args.path), args.on_error)
    stats = file_stats(args.path, args.on_error)
    table = Table(title=f"{args.path} ({stats.kind})")
    table.add_column("category")
    table.add_column("count", justify="right")
    table.add_column("share", justify="right")
    total = sum(stats.counts.values())
    for category, count in stats.counts.most_common():
        table.add_row(category, f"{count:,}", f"{count / total:.1%}")
    table.add_row("Total", f"{total:,}", "100.0%", end_section=True)
    console = Console()
    console.print(table)
    console.print(", ".join(f"{k}: {v:,}" for k, v in stats.totals.items()))
    _print_skips(console, [stats.skipped] if stats.skipped else [])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ctl-data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("synth", help="write the synthetic dataset in the real CTL and STL formats")
    s.add_argument("--out", required=True, help="output folder (replaced atomically)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--outfits", type=int, default=5000, help="CTL outfits, train and test together")
    s.add_argument(
        "--world",
        choices=("bench", "toy"),
        default="bench",
        help="bench: compatibility by attribute rules (the default); toy: one style per outfit",
    )
    s.add_argument(
        "--split",
        choices=("nondisjoint", "disjoint"),
        default="nondisjoint",
        help="bench: disjoint test looks combine a hue and a scheme never seen in training",
    )
    s.add_argument(
        "--layout",
        choices=("ctl", "polyvore"),
        default="ctl",
        help="bench: ctl writes ctl/ and stl/; polyvore writes polyvore_outfits/ with both splits",
    )
    s.add_argument("--annotations-only", action="store_true", help="write annotations and latent truth, no image")
    s.add_argument("--styles", type=int, default=16, help="toy: latent styles")
    s.add_argument("--scenes", type=int, default=300, help="STL scenes")
    s.set_defaults(run=_synth)
    s = sub.add_parser("prepare", help="build (or check) the product store of a CTL or STL folder")
    s.add_argument("folder")
    s.add_argument("--kind", choices=("auto", "ctl", "stl"), default="auto")
    s.add_argument("--size", type=int, default=64, help="crop size in pixels")
    s.add_argument("--on-error", choices=("raise", "skip"), default="raise", help="bad annotation rows: stop, or skip and count")
    s.add_argument("--store-dir", default=None, help="where stores go (default: FOLDER/store)")
    s.add_argument("--workers", type=int, default=0, help="decoding processes (0: one per core)")
    s.set_defaults(run=_prepare)
    s = sub.add_parser("download", help="fetch the images a CTL or STL folder names (or a list of URLs)")
    s.add_argument("folder", help="CTL: writes images/; STL: products/ and scenes/; also download_report.json")
    s.add_argument("--kind", choices=("auto", "ctl", "stl"), default="auto")
    s.add_argument("--from-urls", metavar="FILE", help="a plain list of URLs instead, saved as FOLDER/images/<file name>")
    s.add_argument("--base-url", default=PINIMG_BASE_URL, help="where signatures are served, as .../<s[0:2]>/<s[2:4]>/<s[4:6]>/<s>.jpg")
    s.add_argument("--limit", type=_at_least(1), default=None, help="only the first N images (a sample)")
    s.add_argument("--concurrency", type=_at_least(1), default=16, help="requests in flight")
    s.add_argument("--rate", type=_at_least(0, float), default=10.0, help="requests per second, retries included (0: no limit)")
    s.add_argument("--timeout", type=_at_least(0.001, float), default=30.0, help="seconds per request, first to last byte")
    s.add_argument("--retries", type=_at_least(0), default=5, help="further attempts after a failure that may pass")
    s.add_argument("--backoff", type=_at_least(0, float), default=1.0, help="seconds before the first retry, doubling each time")
    s.add_argument("--verify", action="store_true", help="decode every image already present; fetch again those that fail")
    s.add_argument("--on-error", choices=("raise", "skip"), default="raise", help="bad annotation rows: stop, or skip and count")
    s.set_defaults(run=_download)
    s = sub.add_parser("stats", help="per-category counts of a CTL or STL annotation file; splits of a polyvore_outfits folder")
    s.add_argument("path")
    s.add_argument("--on-error", choices=("raise", "skip"), default="raise")
    s.set_defaults(run=_stats)
    return p


def main(argv: list[str] | None = None) -> None:
    keep_freed_memory()
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with friendly_errors("ctl-data"):
        args.run(args)


if __name__ == "__main__":
    main()
