"""RESULTS.md from the raw benchmark results: one part per host, one section per figure, its goal,
and whether it is met; a goal counts as met only where it is met on every host recorded.

Raw results are ``{"hosts": [run, ...]}``, one run per host (``machine.host_key``); a file written
before hosts were kept (one run at the top level) reads as one host.
"""

from __future__ import annotations

from pathlib import Path

from ctl_lightning.benchmarks.gpu_report import STEPS_PER_CALL
from ctl_lightning.benchmarks.machine import cpu_vendor, host_key


def hosts_of(results: dict) -> list[dict]:
    """The runs of a results file, one per host, in the order they were first recorded."""
    return list(results["hosts"]) if "hosts" in results else [results]


def with_run(results: dict | None, run: dict) -> dict:
    """``results`` with ``run`` recorded for its host: replacing that host's earlier run, keeping the others'."""
    hosts = hosts_of(results) if results else []
    key = host_key(run["machine"])
    kept = [r if host_key(r["machine"]) != key else run for r in hosts]
    return {"hosts": kept if any(host_key(r["machine"]) == key for r in hosts) else [*hosts, run]}


def run_of(results: dict | None, machine: dict) -> dict | None:
    """This host's earlier run in ``results``, if any."""
    key = host_key(machine)
    return next((r for r in hosts_of(results) if host_key(r["machine"]) == key), None) if results else None


def _verdict(value: float, goal: float, higher_is_better: bool = True) -> str:
    met = value >= goal if higher_is_better else value <= goal
    return "**met**" if met else "**not met**"


def _range(r: dict, unit: str = "img/s") -> str:
    low, high = r["per_s_range"]
    return f"{r['per_s']:,.0f} {unit} ({low:,.0f} to {high:,.0f})"


def _ms(t: dict) -> str:
    return f"{1000 * t['median_s']:.1f} ms (spread {100 * t['spread']:.0f}%)"


def _loader_rows(loader: dict) -> list[dict]:
    return [r for key, r in loader.items() if key.startswith("workers=")]


def loader_section(loader: dict) -> list[str]:
    lines = [
        "## Loader: product store against a seed-style loader",
        "",
        "Triplet images delivered per second as normalized float tensors, same batch size (64 triplets)",
        "and worker count for both. Seed-style: PIL open + Resize + ToTensor + Normalize of each",
        "member's JPEG crop (as the seed's Dataset). Store: uint8 rows read by row id from the store file,",
        "deduplicated per batch, then normalized. Goal: at least 30x.",
        *(
            ["Their runs alternate, so both meet the same host load."]
            if all("runs" in r["seed_style"] for r in _loader_rows(loader))
            else []
        ),
        "",
        "| workers | seed-style | product store | ratio | goal 30x |",
        "|---|---|---|---|---|",
    ]
    for r in _loader_rows(loader):
        lines.append(
            f"| {r['workers']} | {_range(r['seed_style'])} | {_range(r['product_store'])} | {r['ratio']:.0f}x | {_verdict(r['ratio'], 30)} |"
        )
    return [*lines, ""]


def overhead_section(o: dict) -> list[str]:
    return [
        "## Loader overhead in training",
        "",
        f"Training steps per second with the real TripletsDataModule ({o['num_workers']} workers) against the",
        f"same {o['steps']} batches already in memory; default backbone frozen, feature cache off, so every",
        "step embeds its images and the loader is on the critical path. Goal: at least 0.95.",
        "",
        "| fed by | steps/s | runs (s) |",
        "|---|---|---|",
        f"| TripletsDataModule | {o['datamodule_steps_per_s']:.2f} | {', '.join(f'{x:.2f}' for x in o['datamodule_runs_s'])} |",
        f"| tensors in memory | {o['in_memory_steps_per_s']:.2f} | {', '.join(f'{x:.2f}' for x in o['in_memory_runs_s'])} |",
        "",
        f"Ratio: **{o['ratio']:.3f}** of the in-memory rate: {_verdict(o['ratio'], 0.95)}.",
        "",
    ]


def cache_section(cache: dict) -> list[str]:
    cache = {name: c for name, c in cache.items() if isinstance(c, dict)}
    first = next(iter(cache.values()))
    lines = [
        "## Frozen-backbone feature cache",
        "",
        "With `model.freeze_backbone=true` and no augmentation the backbone features of every product are",
        "computed once at the start of fit and the head trains on them (automatic; `model.feature_cache=false`",
        "turns it off). tests/test_fast_paths.py asserts the cached and uncached runs give the same losses",
        f"to 1e-5. One epoch of {first['epoch_steps']} steps on the default synthetic data, 64 px:",
        "",
        "| backbone | cached epoch (head only) | the same, fixed-shape step | the same steps in a plain loop | recomputing the backbone "
        "| speed-up of epochs after the first | goal 50x | first-epoch extra (fit start, cache build) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, c in cache.items():
        loop = f"{c['plain_loop_epoch_s']:.2f} s" if "plain_loop_epoch_s" in c else "not measured"
        stepped = (
            f"{c['stepped_epoch_s']:.2f} s ({', '.join(f'{x:.2f}' for x in c['stepped_runs_s'])}; "
            f"{c['stepped_epoch_s'] / c['cached_epoch_s']:.2f}x)"
            if "stepped_epoch_s" in c
            else "not measured"
        )
        lines.append(
            f"| {name} | {c['cached_epoch_s']:.2f} s ({', '.join(f'{x:.2f}' for x in c['cached_runs_s'])}) | {stepped} | {loop} | "
            f"{c['uncached_epoch_s']:.1f} s ({', '.join(f'{x:.1f}' for x in c['uncached_runs_s'])}) | **{c['speedup']:.0f}x** | "
            f"{_verdict(c['speedup'], 50)} | {c['first_epoch_extra_s (cache build, fit start)']:.1f} s |"
        )
    return [
        *lines,
        "",
        f"The uncached epoch is timed over {first['uncached_measured_steps']} steps and scaled to the epoch. The plain loop",
        "(benchmarks/bounds.py) runs the same head steps (the head, the triplet loss, Adam) over the same triplets",
        "without Lightning, each batch deduplicated beforehand: what the cached epoch costs beyond it is Lightning's",
        "per-step work and the step's batch-accuracy bookkeeping. The fixed-shape step "
        f"(`model.steps_per_call={first.get('steps_per_call', STEPS_PER_CALL)}`,",
        "src/ctl_lightning/models/member_steps.py) trains on the same batches in the same order, that many optimizer steps a",
        "trainer call, each triplet member its own row (tests/test_member_steps.py: the same losses step by step);",
        "its ratio is to the cached epoch of the same run. The first-epoch extra includes writing the cache to disk,",
        "from where the fixed-shape fit loads it.",
        "",
    ]


def _shared_row(name: str, r: dict) -> str:
    return f"| {name}: {r['triplets']:,} | {r['images_without_dedup']:,} | {r['images_with_dedup']:,} | {100 * r['saved_fraction']:.1f}% |"


def dedup_section(d: dict, grouped: dict | None) -> list[str]:
    lines = [
        "## Unique images per batch",
        "",
        "Each distinct product of a batch is embedded once and anchors, positives and negatives index into",
        "those embeddings (batches of 64 triplets, shuffled). tests/test_fast_paths.py asserts the loss is",
        "the same with and without deduplication.",
        "",
        "| triplets | images without dedup | images with dedup | forward passes saved |",
        "|---|---|---|---|",
    ]
    names = {
        "synthetic_default": "synthetic default (8 per outfit)",
        "ctl_raw_test_annotations": "CTL-like: real raw_test.tsv outfits, 1 per outfit",
    }
    lines += [_shared_row(names.get(key, key), r) for key, r in d.items() if isinstance(r, dict)]
    if grouped is None:
        return [*lines, ""]
    shape = grouped["all_in_batch"]
    outfits = f"outfit-grouped ({shape['outfits_per_batch']} outfits x {shape['items_per_outfit']} items, {shape['batches']} batches)"
    lines += [
        _shared_row(f"{outfits}, every in-batch triplet (`loss.miner=none`)", grouped["all_in_batch"]),
        _shared_row(f"{outfits}, `loss.miner=batch_hard` (one per anchor and positive category)", grouped["batch_hard"]),
    ]
    return [
        *lines,
        "",
        "Outfit-grouped batches (`data.batching=outfits`) hold a few items of each of a few outfits, so their",
        "products form many protocol triplets: one epoch, same synthetic data. Images without dedup are 3 per",
        "triplet trained on; semihard and multi_similarity keep a share of the in-batch triplets that depends",
        "on the model. Counts, not timings (rerun with `--only dedup grouped_batches`).",
        "",
    ]


def _alternation(t: dict) -> list[str]:
    """How the two sides were timed: runs alternating (with each round's ratio), or in two blocks (older results)."""
    if "round_ratios" not in t:
        return ["The two were timed one block after the other."]
    ratios = ", ".join(f"{r:.2f}" for r in t["round_ratios"])
    return [f"Their runs alternate, so both meet the same host load; each round's ratio: {ratios}."]


def catalog_section(c: dict) -> list[str]:
    t = c["throughput"]
    lines = [
        "## Catalog build",
        "",
        f"Predict over {t['products']:,} products (store -> model -> the writer streaming the `similar` and",
        f"`compatible` catalogs) against the model alone on normalized tensors in memory, batch {t['batch_size']}.",
        *_alternation(t),
        "",
        "| | throughput |",
        "|---|---|",
        f"| predict, catalogs written | {_range(t['predict'])} |",
        f"| pure inference | {_range(t['pure_inference'])} |",
        "",
        f"Ratio **{t['ratio']:.2f}**: {_verdict(t['ratio'], 0.9)} (goal 0.9).",
        "",
        "Resident memory of a fresh process building a catalog (32 px crops) at two sizes: before predict,",
        "and the peak during predict alone (the high-water mark is reset just before it).",
        "",
        "| products | catalog files | RSS before predict | peak RSS during predict | growth |",
        "|---|---|---|---|---|",
    ]
    for r in c["peak_rss"]:
        growth = r["peak_rss_during_predict_mib"] - r["rss_before_predict_mib"]
        lines.append(
            f"| {r['products']:,} | {r['catalog_mib']:.1f} MiB | {r['rss_before_predict_mib']:.0f} MiB | "
            f"{r['peak_rss_during_predict_mib']:.0f} MiB | {growth:+.0f} MiB |"
        )
    return [*lines, ""]


def _reruns(run: dict) -> str:
    """The steps rerun alone since the host's full run (``--only``), each with the code it ran."""
    if not run.get("reruns"):
        return ""
    steps = ", ".join(f"`{step}` (code at {commit or 'not recorded'})" for step, commit in run["reruns"].items())
    return f" Rerun since with `--only`: {steps}."


def merge_section(m: dict) -> list[str]:
    dims = ", ".join(f"`{kind}` {dim}-d" for kind, dim in m["dims"].items())
    lines = [
        "## Catalog merge at scale",
        "",
        f"What rank 0 does after a predict on several ranks or nodes: {m['ranks']} interleaved shards (rows dealt",
        f"as DistributedSampler deals them) merged into both catalogs ({dims}, float32), checked and published,",
        "on synthetic shards, the two catalogs in parallel as the writer merges them. Each figure is the median of",
        "the size's runs, alternating merge and copy; smaller sizes, whose times are short, run more often.",
        "",
        "| rows | runs | both catalogs | per row | plain copy of the same bytes | merge / copy |",
        "|---|---|---|---|---|---|",
    ]
    for r in m["sizes"]:
        copy = f"{r['copy_s']:.2f} s | {r['over_copy']:.2f}x" if "copy_s" in r else "not measured | n/a"
        runs = r.get("runs", m.get("repeats", 2))  # runs recorded before sizes kept their own count
        lines.append(f"| {r['rows']:,} | {runs} | {r['total_s']:.2f} s | {r['us_per_row']:.2f} µs | {copy} |")
    lines += ["", f"Time per row at the largest size against the smallest: **{m['per_row_growth']:.2f}x** (goal <= 1.5x: linear)."]
    if "over_copy_growth" in m:
        lines += [
            f"Merge over plain copy at the largest size against the smallest: **{m['over_copy_growth']:.2f}x** (goal <= 1.5x): "
            "the copy reads every shard and writes as many bytes to fresh files, in alternating runs with the merge, so "
            "what the host's page cache and disk do at each size (dirty-page write-back once gigabytes are written) "
            "falls on both."
        ]
    if "copy_per_row_growth" in m:
        lines += [
            f"The plain copy's own time per row grows **{m['copy_per_row_growth']:.2f}x** over the same sizes: what a size's "
            "bytes cost to write on this host, before the merge does anything."
        ]
    return [*lines, ""]


def _product_cells(c: dict) -> str:
    """The matrix product's single query (the engine before the scan), where this run measured it."""
    if "exact_product_single" not in c:
        return "- (this run predates the scan: its exact engine was the matrix product) | - | - |"
    return (
        f"{_ms(c['exact_product_single'])} | {c['exact_product_single_vs_bound']:.2f}x | "
        f"{c['exact_product_over_scan']:.1f}x, top-10 identical for {100 * c['scan_identical_top10_share']:.0f}% of queries |"
    )


def _bound_lines(r: dict) -> list[str]:
    """How this run's bound of a single query was measured (runs before session 10 derived it from the bandwidth)."""
    if "bound_read" not in r["catalogs"][0]:
        return [
            "The bound of a single query is the bytes of the rows it scans divided by that bandwidth; here all",
            "rows are one partition (the worst case: a real query scans one category only). The exact engine",
            "scores one query with its einsum scan; the matrix product it used before is timed beside it.",
        ]
    derived = ", ".join(f"{1000 * c['bound_from_bandwidth_s']:.1f} ms at {c['rows']:,} rows" for c in r["catalogs"])
    return [
        "The bound of a single query is the cheapest full read of the rows it scans (a float32 sum of the same",
        "block with all threads), timed in alternating runs with the exact single query, so both meet the same",
        f"load (the bandwidth above would give {derived}). All rows are one partition (the worst case: a real",
        "query scans one category only). The exact engine scores one query with its scan (faiss's inner-product",
        "kernel over slices in parallel threads); the matrix product it used before is timed beside it.",
    ]


def retrieval_section(r: dict) -> list[str]:
    bw = r["bandwidth"]
    lines = [
        "## Retrieval",
        "",
        f"Streaming bandwidth measured in this run: **{bw['gb_per_s']:.1f} GB/s** (float32 sum over {bw['bytes'] / 2**30:.0f} GiB).",
        *_bound_lines(r),
        "",
        "| rows | bound, 1 query | exact, 1 query | faiss Flat, 1 query | exact / bound | exact, 256 queries | faiss Flat, 256 queries | faiss / exact (256) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in r["catalogs"]:
        lines.append(
            f"| {c['rows']:,} | {1000 * c['bound_single_s']:.1f} ms | {_ms(c['exact_single'])} | {_ms(c['faiss_flat_single'])} | "
            f"{c['exact_single_vs_bound']:.2f}x {_verdict(c['exact_single_vs_bound'], 1.5, False)} | {_ms(c['exact_batch256'])} | "
            f"{_ms(c['faiss_flat_batch256'])} | {c['faiss_batch_over_exact_batch']:.1f}x {_verdict(c['faiss_batch_over_exact_batch'], 1.0)} |"
        )
    lines += [
        "",
        "The exact engine's single query before the scan (torch's matrix product, `scan_queries=0`), same run:",
        "",
        "| rows | matrix product, 1 query | matrix product / bound | matrix product / scan |",
        "|---|---|---|---|",
        *[f"| {c['rows']:,} | {_product_cells(c)}" for c in r["catalogs"]],
    ]
    lines += [
        "",
        "float16 storage (half the bytes; scores accumulated in float32):",
        "",
        "| rows | float16, 1 query | float16 / float32 bound | recall@10 vs float32 | faiss top-10 identical to exact (queries) | mean top-10 overlap |",
        "|---|---|---|---|---|---|",
    ]
    for c in r["catalogs"]:
        lines.append(
            f"| {c['rows']:,} | {_ms(c['exact_float16_single'])} | {c['exact_float16_single_vs_float32_bound']:.2f}x | "
            f"{c['float16_recall_at_10']:.3f} | {100 * c['faiss_identical_top10_share']:.0f}% | {c['faiss_top10_overlap']:.4f} |"
        )
    return [
        *lines,
        "",
        "Where faiss and the exact engine differ at all, it is the order of two items whose scores are",
        "equal to about 1e-6 (float rounding of different summation orders), at the edge of the top 10.",
        "",
    ]


def embedder_section(e: dict) -> list[str]:
    lines = [
        "## Image queries: onnxruntime against torch",
        "",
        f"Images embedded per second by the default backbone and head (ImageNet weights) on {e['image_size']} px store crops:",
        "uint8 crops in, L2-normalized embeddings out, as ctl-serve embeds an upload. The same model, exported by",
        "`ctl-export onnx`'s code, against torch in the same process, each runtime given the same number of threads;",
        f"the two agree to {e['max_difference']:.1e} (largest difference of any coordinate over {e['crops_compared']} crops).",
        "Batch 1 is a lone upload, 16 a full micro-batch of the server. No goal: the figure says which runtime the",
        f"server should prefer on this CPU. Load average (1 min) when the step began and ended: {e['load_average_before']:.1f}"
        f" and {e['load_average_after']:.1f}; above the core count, the threads compete with other processes.",
        *(
            [
                "With more threads than free cores, torch's threads wait on each other and its multi-thread rows collapse;",
                "the 1-thread rows are then the fair comparison.",
            ]
            if min(e["load_average_before"], e["load_average_after"]) > max(int(t) for t in e["threads"])
            else []
        ),
        "",
        "| threads | batch | torch | onnxruntime | onnxruntime / torch |",
        "|---|---|---|---|---|",
    ]
    for threads, row in e["threads"].items():
        for batch in (1, 16):
            lines.append(
                f"| {threads} | {batch} | {_range(row[f'torch_batch{batch}'])} | {_range(row[f'onnxruntime_batch{batch}'])} | "
                f"{row[f'onnxruntime_over_torch_batch{batch}']:.2f}x |"
            )
    return [*lines, ""]


def _ms_or_none(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"


def loadtest_section(r: dict) -> list[str]:
    """The load test of a real ctl-serve (``benchmarks/loadtest.py``)."""
    plan, served, reload, rss, server = r["plan"], r["served"], r["reload"], r["rss"], r["server"]
    mix = ", ".join(f"{endpoint} {100 * share:.0f}%" for endpoint, share in r["mix"].items())
    lines = [
        "## Load test: ctl-serve on loopback",
        "",
        f"`{r['command']}`, code at commit {r.get('commit') or 'not recorded'}: {plan['clients']} concurrent clients (one",
        f"`httpx.AsyncClient` in the bench's process, each sending its next request when its last is answered) for {plan['seconds']:g} s",
        f"against a real `ctl-serve` on 127.0.0.1 serving {served['products']:,} products in {served['categories']} categories, images",
        f"embedded by {served['embedder']} (a random-init tf_efficientnet_lite0 at 32 px, `serve/sample_run.py`, unless a RUN_DIR is given).",
        f"Mix: {mix}; batches of 8 product queries; uploads are the store's collages with a product's box, half with",
        f"its category. The server used {_ms_or_none(server['cpu_seconds'])} CPU seconds, the clients",
        f"{r['client_cpu_seconds']:.1f}, on {r['cores']} cores shared between them (OMP_NUM_THREADS={r.get('omp_num_threads')}; "
        f"load average {r['load_average_before']:.1f}",
        f"before, {r['load_average_after']:.1f} after): on loopback the clients' work is part of the figure.",
        "",
        "| endpoint | requests | answered 200 | errors | p50 ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for endpoint, e in r["endpoints"].items():
        lines.append(
            f"| {endpoint} | {e['requests']:,} | {e['ok']:,} | {e['errors']:,} | {_ms_or_none(e['p50_ms'])} | "
            f"{_ms_or_none(e['p99_ms'])} | {_ms_or_none(e['max_ms'])} |"
        )
    errors = "; ".join(f"{kind}: {n}" for kind, n in r["errors_by_kind"].items()) or "none"
    refused = reload["error"]
    lines += [
        "",
        f"**{r['requests']:,} requests in {r['load_seconds']:.1f} s: {r['throughput_per_s']:,.0f} requests/s; errors: {errors}.**",
        f"The server counted its answers by status: {', '.join(f'{k}: {v:,}' for k, v in server['answers_by_status'].items())}"
        f" ({server['forward_passes']:,} image forward passes, {_ms_or_none(server['mean_images_per_pass'])} images a pass on average).",
        "",
        f"**Reload under load**: `POST /admin/reload` of {'a second run' if served['reload_to'] != served['run'] else 'the same run'} "
        f"at {reload['start_s']:.1f} s answered {reload['status']} after {reload['seconds']:.1f} s"
        f"{'' if reload['error'] is None else f' ({refused})'}; "
        f"{reload['requests_in_flight']:,} requests were in flight while it ran and {reload['requests_around']:,} within 1 s of it, "
        f"**{reload['errors_around']} of them failed**.",
        "",
    ]
    if rss is not None:
        verdict = "flat" if rss["flat"] else "not measured (window too short)" if rss["flat"] is None else "**growing**"
        trend = (
            f"over the steady window ({rss['window_start_s']:.1f} s to the end, {rss['window_samples']} samples, after the reload) it "
            f"changes by {rss['slope_mib_per_min']:+.1f} MiB a minute, {rss['growth_mib']:+.1f} MiB in all "
            f"({100 * rss['growth_share']:+.1f}% of its size, {_signed(rss['growth_kib_per_request'])} KiB for each of the "
            f"{rss['window_requests']:,} requests started in it; flat means at most +{100 * r['flat_growth_threshold']:.0f}%, "
            f"see FLAT_GROWTH in `benchmarks/loadtest.py`): **{verdict}**."
            if rss["slope_mib_per_min"] is not None
            else f"the steady window after the reload is too short for a trend: {verdict}."
        )
        lines += [
            f"**Resident memory** (the server's VmRSS every 0.5 s): {rss['first_mib']:.0f} MiB when the load began, peak "
            f"{rss['peak_mib']:.0f} MiB, {rss['last_mib']:.0f} MiB at the end; {trend}",
            f"Every 3 s (MiB): {', '.join(f'{v:.0f}' for v in rss['every_3s_mib'])}.",
            "",
        ]
    lines += [f"The server stopped on {server['stopped_by'] or 'its own'} with exit status {server['exit_code']}.", ""]
    return lines


def goals(run: dict) -> dict[str, tuple[str, bool]]:
    """Every figure of a run that has a goal: its name (with the goal), the figure, and whether it is met."""
    out: dict[str, tuple[str, bool]] = {}
    for key, r in run.get("loader", {}).items():
        if key.startswith("workers="):
            out[f"loader, store / seed-style, {r['workers']} workers (>= 30x)"] = (f"{r['ratio']:.0f}x", r["ratio"] >= 30)
    if "training_overhead" in run:
        ratio = run["training_overhead"]["ratio"]
        out["loader overhead in training (>= 0.95)"] = (f"{ratio:.3f}", ratio >= 0.95)
    for name, c in run.get("feature_cache", {}).items():
        if isinstance(c, dict):
            out[f"feature cache, {name.split()[0]} (>= 50x)"] = (f"{c['speedup']:.0f}x", c["speedup"] >= 50)
    if "catalog" in run:
        ratio = run["catalog"]["throughput"]["ratio"]
        out["catalog build / pure inference (>= 0.9)"] = (f"{ratio:.2f}", ratio >= 0.9)
    if "catalog_merge" in run:
        growth = run["catalog_merge"]["per_row_growth"]
        largest = run["catalog_merge"]["sizes"][-1]["rows"]
        out[f"catalog merge, time per row at {largest:,} rows / smallest size (<= 1.5x)"] = (f"{growth:.2f}x", growth <= 1.5)
        if "over_copy_growth" in run["catalog_merge"]:
            over = run["catalog_merge"]["over_copy_growth"]
            out[f"catalog merge over a plain copy of its bytes, {largest:,} rows / smallest size (<= 1.5x)"] = (f"{over:.2f}x", over <= 1.5)
    if "loadtest" in run:
        load = run["loadtest"]
        out[f"load test, {load['plan']['clients']} clients: errors (= 0)"] = (f"{load['errors']}", load["errors"] == 0)
        reload = load["reload"]
        out["load test: reload answered 200, no request around it failed"] = (
            f"{reload['status']}, {reload['errors_around']} failed",
            reload["status"] == 200 and reload["errors_around"] == 0,
        )
        if load["rss"] and load["rss"]["flat"] is not None:
            growth = load["rss"]["growth_share"]
            out[f"load test: server RSS growth after the reload (<= {100 * load['flat_growth_threshold']:.0f}%)"] = (
                f"{100 * growth:+.1f}%",
                load["rss"]["flat"],
            )
    for c in run.get("retrieval", {}).get("catalogs", []):
        rows = f"{c['rows']:,} rows"
        out[f"exact single query / memory bound, {rows} (<= 1.5x)"] = (
            f"{c['exact_single_vs_bound']:.2f}x",
            c["exact_single_vs_bound"] <= 1.5,
        )
        ratio = c["faiss_batch_over_exact_batch"]
        out[f"faiss / exact, 256 queries, {rows} (>= 1x)"] = (f"{ratio:.1f}x", ratio >= 1.0)
    return out


def _host_name(run: dict) -> str:
    m = run["machine"]
    return f"{m['cpu']} ({cpu_vendor(m)})"


def goals_section(runs: list[dict]) -> list[str]:
    per_host = [goals(r) for r in runs]
    names = list(dict.fromkeys(name for g in per_host for name in g))
    lines = [
        "## Goals on every host",
        "",
        "A goal counts as met only where it is met on every host recorded; a figure a host has not",
        "measured leaves the goal open.",
        "",
        f"| goal | {' | '.join(_host_name(r) for r in runs)} | on every host |",
        f"|---|{'---|' * len(runs)}---|",
    ]
    for name in names:
        cells = [f"{g[name][0]} {'met' if g[name][1] else '**not met**'}" if name in g else "not measured" for g in per_host]
        results = [g[name][1] for g in per_host if name in g]
        verdict = "**not met**" if not all(results) else "**met**" if len(results) == len(runs) else "open"
        lines.append(f"| {name} | {' | '.join(cells)} | {verdict} |")
    return [*lines, ""]


def host_section(run: dict) -> list[str]:
    m = run["machine"]
    simd = ", ".join(m["simd"]) if m.get("simd") else "not recorded"
    blas = ", ".join(f"{k}: {v}" for k, v in m["blas"].items()) if m.get("blas") else "not recorded"
    lines = [
        f"# Host: {_host_name(run)}",
        "",
        f"Written by `make {'bench-quick' if run['mode'] == 'quick' else 'bench'}` "
        f"(`python -m ctl_lightning.benchmarks{' --quick' if run['mode'] == 'quick' else ''}`) in {run['total_seconds']:.0f} s, "
        f"code at commit {run.get('commit') or 'not recorded (before hosts were kept)'}. "
        f"Every figure is the median of {run['plan']['repeats']} or more runs, measured against its reference in the same run."
        + _reruns(run),
        "",
        f"Machine: {m['cpu']}, vendor {cpu_vendor(m)}, {m['cores']} cores, {m.get('memory_gib', '?')} GiB; SIMD: {simd}; "
        f"BLAS: {blas}; torch {m['torch']} with {m['torch_threads']} intra-op / {m['torch_interop_threads']} inter-op threads; "
        f"OMP_NUM_THREADS={m['OMP_NUM_THREADS']}; glibc keeps freed memory (ctl_lightning.allocator): "
        f"{ {True: 'yes', False: 'no'}.get(m.get('keep_freed_memory'), 'not recorded') }.",
        "",
    ]
    sections = (
        ("loader", lambda: loader_section(run["loader"])),
        ("training_overhead", lambda: overhead_section(run["training_overhead"])),
        ("feature_cache", lambda: cache_section(run["feature_cache"])),
        ("dedup", lambda: dedup_section(run["dedup"], run.get("grouped_batches"))),
        ("catalog", lambda: catalog_section(run["catalog"])),
        ("retrieval", lambda: retrieval_section(run["retrieval"])),
        ("image_embedder", lambda: embedder_section(run["image_embedder"])),
        ("catalog_merge", lambda: merge_section(run["catalog_merge"])),
        ("loadtest", lambda: loadtest_section(run["loadtest"])),
    )
    for step, section in sections:
        lines += section() if step in run else [f"(`{step}` not measured on this host.)", ""]
    return lines


def write_report(results: dict, path: Path) -> Path:
    runs = hosts_of(results)
    json_name = path.with_suffix(".json").name.replace("RESULTS", "results")
    lines = [
        "# Benchmarks",
        "",
        f"Written by `make bench` (`python -m ctl_lightning.benchmarks`), one part per host it has run on; raw numbers in "
        f"`{json_name}`. Hosts: {'; '.join(_host_name(r) for r in runs)}.",
        "",
        "Every figure here is the speed (or memory, or a count) of one code path against its reference, with the same",
        "model, data and seed on both sides; none compares methods on quality, so there is no spread over training seeds",
        "to give. The spread shown is that of repeated runs, and on a shared host it is mostly other processes' load:",
        "read a ratio as an effect only where its runs' ranges do not overlap.",
        "",
        *(
            [
                "Approximate indexes (ivf, hnsw) at 1M and 10M rows are measured apart, in [ANN.md](ANN.md) (`python -m ctl_lightning.benchmarks.ann`).",
                "",
            ]
            if path.with_name("ANN.md").is_file()
            else []
        ),
        *goals_section(runs),
    ]
    for run in runs:
        lines += host_section(run)
    notes_file = path.with_name("NOTES.md")
    if notes_file.is_file():
        lines += [notes_file.read_text()]
    path.write_text("\n".join(lines) + "\n")
    return path
