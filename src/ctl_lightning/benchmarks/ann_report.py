"""ANN.md from ann.json: per host and catalog size, every index and setting, and the goal of issue 14."""

from __future__ import annotations

from pathlib import Path

from ctl_lightning.benchmarks.report import hosts_of
from ctl_lightning.retrieval.index import IndexSettings

GOAL_ROWS, GOAL_RECALL, GOAL_MS = 10_000_000, 0.95, 5.0


def _settings(values: dict) -> str:
    return ", ".join(f"{name} {value}" for name, value in values.items() if name != "kind")


def _rows(kind: str, r: dict) -> list[str]:
    """One table row per search setting of an approximate kind (or one saying why it was skipped)."""
    if "skipped" in r:
        return [f"| {kind} | - | - | {r['skipped']} | | | | | | | |"]
    built = (
        f"{r['build_s']:,.1f} s ({r['rows_per_s']:,.0f} rows/s) | {r['index_mib']:,.0f} MiB | "
        f"{r['rss_growth_mib']:+,.0f} MiB ({r['peak_rss_growth_mib']:+,.0f}) | {r['load_s']:.2f} s"
    )
    lines = []
    for i, s in enumerate(r["searches"]):  # the build's figures on its first row only
        first = f"{kind} | {_settings(r['build_settings'])}" if i == 0 else " | "
        cells = built if i == 0 else " | | | "
        lines.append(
            f"| {first} | {_setting(s)} | {cells} | {s['p50_ms']:.2f} ms | {s['p99_ms']:.2f} ms | {s['recall_at_10']:.4f} | {_meets(s)} |"
        )
    return lines


def _setting(search: dict) -> str:
    return next(f"{name} {value}" for name, value in search.items() if name in ("nprobe", "ef_search"))


def _meets(search: dict) -> str:
    return "yes" if search["recall_at_10"] >= GOAL_RECALL and search["p50_ms"] <= GOAL_MS else "no"


def size_section(size: dict) -> list[str]:
    exact = size["exact"]
    return [
        f"### {size['rows']:,} rows",
        "",
        f"`{size['command']}` (OMP_NUM_THREADS={size['omp_num_threads']}): catalog generated in {size['generate_s']:.0f} s, "
        f"exact top-10 of the {size['queries']:,} queries in {size['ground_truth_s']:.0f} s.",
        "",
        "| index | build settings | search setting | build | index memory | RSS growth (peak) | load | p50 | p99 | recall@10 | recall >= 0.95 at p50 <= 5 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| exact (scan) | - | - | - | {size['rows'] * size['dim'] * 4 / 2**20:,.0f} MiB (the block) | | | "
        f"{exact['p50_ms']:.1f} ms | {exact['p99_ms']:.1f} ms | {exact['recall_at_10']:.4f} ({exact['queries']} queries) | "
        f"{_meets(exact)} |",
        *_rows("ivf", size["ivf"]),
        *_rows("hnsw", size["hnsw"]),
        "",
    ]


def goal_line(run: dict) -> str:
    size = next((s for s in run["sizes"] if s["rows"] == GOAL_ROWS), None)
    if size is None:
        return f"**Goal** (recall@10 >= {GOAL_RECALL} at <= {GOAL_MS:g} ms a query, {GOAL_ROWS:,} rows): not measured on this host yet."
    passing = [
        f"{kind} {_setting(s)} (recall {s['recall_at_10']:.3f}, p50 {s['p50_ms']:.2f} ms, p99 {s['p99_ms']:.2f} ms)"
        for kind in ("ivf", "hnsw")
        for s in size[kind].get("searches", [])
        if _meets(s) == "yes"
    ]
    verdict = f"**met** by {'; '.join(passing)}" if passing else "**not met** by any setting measured"
    return f"**Goal** (recall@10 >= {GOAL_RECALL} at <= {GOAL_MS:g} ms a query, median, {GOAL_ROWS:,} rows): {verdict}."


def write_ann_report(results: dict, path: Path) -> Path:
    runs = hosts_of(results)
    lines = [
        "# Approximate indexes: ivf and hnsw",
        "",
        "Written by `python -m ctl_lightning.benchmarks.ann` (module docstring), one part per host; raw numbers in `ann.json`.",
        "",
        f"Catalogs are synthetic, 128-d float32: {runs[-1]['generator']}. The whole catalog is one partition (the worst",
        "case: a real query scans one category). Queries are held-out points of the same distribution, searched one at a",
        "time through the project's index classes (as a product page asks); p50 and p99 are over all of them (exact: over",
        "the first ones only). Recall@10 is against the exact top-10 from batched matrix products. Builds use the defaults of",
        "`IndexSettings` (exact_below 0). Index memory is what the faiss index holds (vectors, ids, centroids or links);",
        "RSS growth is the process's resident memory after the build against before it, its peak in brackets (the k-means",
        "sample and the chunk being added). Load is a fresh index finding the saved one: hashing the partition's vectors",
        "and reading the file. Latencies on a shared host include other processes' load.",
        "",
        "Recall here is the generator's as much as the index's. Its clusters keep about 100 rows at every size while",
        "the default IVF cells grow as 2 * sqrt(rows), so a cell holds a fraction of a cluster at 50,000 rows and",
        "a dozen whole clusters at 10M: the larger catalogs are the easier ones for IVF. A real catalog's",
        "neighbourhoods need not look like this; measure recall on it (`ctl-recommend --index exact` against",
        "`--index ivf` on the same queries) before lowering `nprobe`.",
        "",
        f"The defaults now (`IndexSettings`, nlist 0: the power of two nearest 2 * sqrt(rows)): ivf {_settings(IndexSettings('ivf').describe())};"
        f" hnsw {_settings(IndexSettings('hnsw').describe())}. The table's build settings are those a build used.",
        "",
    ]
    for run in runs:
        m = run["machine"]
        lines += [
            f"## Host: {m['cpu']} ({m.get('vendor', '?')}), {m['cores']} cores, {m.get('memory_gib', '?')} GiB",
            "",
            f"Latest run: torch {m['torch']} with {m['torch_threads']} threads, faiss with OMP_NUM_THREADS={m.get('OMP_NUM_THREADS')}.",
            "",
            goal_line(run),
            "",
        ]
        for size in run["sizes"]:
            lines += size_section(size)
    path.write_text("\n".join(lines) + "\n")
    return path
