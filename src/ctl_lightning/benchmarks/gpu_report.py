"""GPU-table.md from gpu-results.json: the measured runs, their ratios, and the goals of issue 13."""

from __future__ import annotations

from collections.abc import Callable

STEPS_PER_CALL = 16  # model.steps_per_call of the fixed-shape step's epochs, here and in make bench (models/member_steps.py)


# model.compile of the compiled fine-tuning epochs (bench/gpu.sh --parts compile). `default` ran slower
# than eager on an H200 in session 13 (inductor's Python launches of a dynamic-shape graph): GPU.md.
BENCH_COMPILE_MODES = ("reduce-overhead",)
# bench/gpu.sh's default --parts: the parts the goals below are read from, in one run.
GOAL_PARTS = ("epochs", "catalog", "release", "compile")


# How the table names model.cuda_graph's settings (models/member_steps.py).
GRAPH_LABELS = {False: "", True: ", CUDA graph", "step": ", CUDA graph of the whole step"}


def step_label(steps_per_call: int | None, cuda_graph: bool | str = False, compile: str | None = None, fused_adam: bool = False) -> str:
    """How the trainer ran the recipe's steps, as the table names it."""
    if compile is not None:
        label = f"one batch a call, compiled ({compile})"
    elif steps_per_call is None:
        label = "one batch a call"
    else:
        label = f"{steps_per_call} steps a call{GRAPH_LABELS[cuda_graph]}"
    return label + (", fused Adam" if fused_adam else "")


def _gpu_waits(profile: dict) -> str:
    """How often a step read data from the GPU (and so waited for it), where the trace counted it."""
    if "gpu_waits_per_step" not in profile:  # traced before session 17
        return ""
    return f", {sum(profile['gpu_waits_per_step'].values()):.1f} waits for the GPU"  # a step


def profile_name(recipe: str, step: str) -> str:
    """The key of a device-store run's profiler trace: the recipe's for its plain step, else with the step."""
    return recipe if step == step_label(None) else f"{recipe}, {step}"


def _device_store_epoch(recipe: str, step: str) -> Callable[[dict], float]:
    return lambda r: measured_epoch(r, recipe, "device store", step)["epoch_s"]


def _fine_tuning_epoch(compile: str | None, fused_adam: bool = False) -> Callable[[dict], float]:
    return _device_store_epoch("fine-tuning", step_label(None, compile=compile, fused_adam=fused_adam))


def _frozen_epoch(*step) -> Callable[[dict], float]:
    return _device_store_epoch("frozen + feature cache", step_label(*step))


GOALS = (  # (figure, how to read it from the results, goal text, test)
    ("seed-scale fine-tuning epoch (s)", _fine_tuning_epoch(None), "<= 6 s", lambda v: v <= 6),
    *(
        (
            f"the same, {step_label(None, compile=mode, fused_adam=True)}: second epoch (s)",
            _fine_tuning_epoch(mode, True),
            "<= 6 s",
            lambda v: v <= 6,
        )
        for mode in BENCH_COMPILE_MODES
    ),
    ("seed-scale frozen + cache epoch (s)", _frozen_epoch(None), "<= 1.5 s", lambda v: v <= 1.5),
    *(
        (f"the same, {step_label(STEPS_PER_CALL, *step)} (s)", _frozen_epoch(STEPS_PER_CALL, *step), "<= 1.5 s", lambda v: v <= 1.5)
        for step in ((False,), (True, None, True), ("step",), ("step", None, True))
    ),
    ("catalog build / pure inference (device store, its best predict batch)", lambda r: _catalog_ratio(r), ">= 0.7", lambda v: v >= 0.7),
    ("release scale: catalog build (s)", lambda r: r["release"]["catalog"]["predict_s"], "<= 10 s", lambda v: v <= 10),
    ("release scale: frozen + cache epoch (s)", lambda r: r["release"]["epoch"]["epoch_s"], "reported", None),
    ("the whole script, from its process's start to its last result (s)", lambda r: _whole_script(r), "<= 300 s", lambda v: v <= 300),
)


def _whole_script(results: dict) -> float:
    """The script's time where it ran every goal part in one process (``--parts`` by default)."""
    if set(results["parts"]) != set(GOAL_PARTS):
        raise KeyError("not the goal parts")
    return results["script_s"]


def measured_epoch(results: dict, recipe: str, path: str, step: str = step_label(None)) -> dict:
    """The epochs part's run of ``recipe`` through ``path`` with ``step``; StopIteration where it was not measured."""
    return next(e for e in results["epochs"] if e["recipe"] == recipe and e["path"] == path and e.get("step", step_label(None)) == step)


def _pure_bound(results: dict) -> float:
    """Pure inference from tensors already on the device, at its fastest predict batch: the strictest bound."""
    return max(p["device_img_per_s"] for p in results["pure_inference"])


def _catalog_ratio(results: dict) -> float:
    """The fastest device-store catalog build's img/s over :func:`_pure_bound`."""
    builds = [c["img_per_s"] for c in results["catalog"] if c["path"] == "device store"]
    if not builds:
        raise KeyError("no device-store catalog build measured")
    return max(builds) / _pure_bound(results)


def _gib(record: dict) -> str:
    gpu = record.get("peak_gpu_gib")
    return f"{gpu:.1f}" if gpu is not None else "-"


def _bounds(b: dict) -> list[str]:
    def timed(name: str) -> str:
        r = b.get(name, {"error": "not measured (no GPU)"})
        return (
            f"{name}: {r['error']}"
            if "error" in r
            else f"{name}: {r['epoch_s']:.2f} s ({r['ms_per_step']:.2f} ms a step, {r['steps']:,} steps)"
        )

    return [
        "What bounds the frozen recipe's epoch (the same step, this run): "
        + "; ".join([timed("eager"), timed("cuda graph")])
        + f"; through the trainer: {b['lightning']['epoch_s']:.2f} s ({1000 * b['lightning']['epoch_s'] / b['lightning']['steps']:.2f} ms a step).",
    ]


def table(results: dict) -> str:
    m, d = results["machine"], results.get("data")
    lines = [
        f"Device: {m.get('gpu', 'CPU only')}; CPU: {m['cpu']} ({m['cores']} cores); torch {m['torch']}; mode: {results['mode']}; "
        f"parts: {','.join(results.get('parts', []))}; {results.get('script_s', 0):.0f} s from the process's start to its latest result.",
        "Timings of code paths, one run each, every path on the same data (data seed 0, sampling seed 42): no method is "
        "compared on quality, so no spread over training seeds applies; compare figures within one run only.",
    ]
    if d:
        lines.append(
            f"Seed scale: {d['products']:,} products, {d['image_size']} px, batch {d['batch_size']}, {d['workers']} loader workers; "
            f"{d['seconds']:.0f} s to generate and prepare."
        )
    epochs = results.get("epochs", [])
    if epochs:
        lines += [
            "",
            "| recipe | trainer step | data path | epoch (s) | ms a step | triplets/s | speed-up over the loader | fit start (s) "
            "| peak GPU (GiB) | profiled: GPU kernel ms a step (kernels, waits for the GPU a step) |",
        ]
        lines.append("|---|---|---|---|---|---|---|---|---|---|")
        for e in epochs:
            step = e.get("step", step_label(None))
            base = next((b for b in epochs if b["recipe"] == e["recipe"] and b["path"] == "loader"), None)
            speed_up = f"{base['epoch_s'] / e['epoch_s']:.1f}x" if base else "-"  # no loader run of the recipe in this run
            p = results.get("profiles", {}).get(profile_name(e["recipe"], step)) if e["path"] == "device store" else None
            traced = f"{p['gpu_kernel_ms_per_step']:.2f} ({p['kernels_per_step']:.0f} kernels{_gpu_waits(p)})" if p else ""
            lines.append(
                f"| {e['recipe']} | {step} | {e['path']} | **{e['epoch_s']:.2f}** | {1000 * e['epoch_s'] / e['steps']:.2f} | {e['triplets_per_s']:,.0f} | "
                f"{speed_up} | "
                f"{e['fit_start_s']:.1f} | {_gib(e)} | {traced} |"
            )
        for e in epochs:
            if "first_epoch_s" in e:
                count = e.get("compiler_counters", {})
                graphs = count.get("stats", {}).get("unique_graphs", 0)
                # Dynamo keeps a compiled graph for the process: a later model of the same structure
                # passes its guards and compiles nothing (its first epoch still records CUDA graphs).
                first = "which compiles" if graphs else "which reused the graph an earlier run of this process compiled"
                lines.append(
                    f"\n{e['recipe']}, {e['step']}: the row shows the second epoch; the first, {first} "
                    f"({e['compile_backend']} backend), took {e['first_epoch_s']:.1f} s. Compiled graphs: "
                    f"{graphs}; graph breaks: {sum(count.get('graph_break', {}).values())}; "
                    f"CUDA graphs skipped: {count.get('inductor', {}).get('cudagraph_skips', 0)}."
                )
    if "pure_inference" in results:
        pure = ", ".join(
            f"{p['host_img_per_s']:,.0f} from host memory and {p['device_img_per_s']:,.0f} on the device at batches of {p['batch_size']:,}"
            for p in results["pure_inference"]
        )
        lines += [
            "",
            f"Pure inference (ResNet18 forward + head, no writing), img/s from uint8 batches: {pure}.",
            "",
            "| catalog build | predict batch | products | predict (s) | of which the store's load (s) | img/s "
            "| / pure inference (on device, fastest batch) | publishing after the last batch (s) | peak GPU (GiB) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for c in results["catalog"]:
            load = "-" if c["device_store_load_s"] is None else f"{c['device_store_load_s']:.2f}"
            lines.append(
                f"| {c['path']} | {c['batch_size']:,} | {c['products']:,} | {c['predict_s']:.2f} | {load} | {c['img_per_s']:,.0f} | "
                f"**{c['img_per_s'] / _pure_bound(results):.2f}** | {c['publish_s']:.2f} | {_gib(c)} |"
            )
    if "store_load_threads" in results:
        t = results["store_load_threads"]
        lines += [
            "",
            f"The device store's load ({t['gib']:.2f} GiB, read and copied where predict runs, median of 3): "
            f"{t['one_thread_s']:.2f} s with one reading thread, {t['threads_s']:.2f} s with {t['threads']} "
            f"({t['speedup']:.1f}x).",
        ]
    traced = results.get("profiles", {}).get("catalog build")
    if traced:
        lines += [
            "",
            f"Profiled catalog build (device store, batches of {traced['batch_size']:,}): the GPU's kernels take "
            f"{traced['gpu_kernel_ms_per_step']:.2f} ms a batch ({traced['kernels_per_step']:.0f} kernels{_gpu_waits(traced)}), the host "
            f"{traced['host_ms_per_step_profiled']:.2f} ms a batch under the profiler ({traced['file']}).",
        ]
    if "bounds" in results:
        lines += ["", *_bounds(results["bounds"])]
    if "ddp_sweep" in results:
        sweep = results["ddp_sweep"]
        jobs = ", ".join(f"margin {j['margin']}: test triplet accuracy {j['test/triplet_accuracy']:.3f}" for j in sweep["jobs"])
        rows = sorted({n for j in sweep["jobs"] for n in j["catalog_rows"].values()})
        lines += [
            "",
            f"Sweep of DDP jobs, `{sweep['command']}`: {len(sweep['jobs'])} jobs in {sweep['seconds']:.0f} s, one sweep directory "
            f"and no stray run directory; DDP world size of each job {sweep['world_sizes']}; every catalog holds each of "
            f"{', '.join(f'{n:,}' for n in rows)} products exactly once; {jobs}.",
        ]
    if "release" in results:
        r = results["release"]
        lines += [
            "",
            f"Release scale: {r['outfits']:,} outfits, {r['products']:,} products ({r['store_gib']:.1f} GiB store at 64 px). "
            f"Store build {r['store_build_s (includes reading annotations, sampling triplets)']:.1f} s.",
        ]
        if "epoch" in r:
            e = r["epoch"]
            lines[-1] += (
                f" Frozen + cache epoch over {e['triplets']:,} triplets, {e['step']}: **{e['epoch_s']:.2f} s** (fit start {e['fit_start_s']:.1f} s: "
                f"device store load {e['device_store_load_s'] or 0:.1f} s, feature cache {e['feature_cache_s'] or 0:.1f} s); "
                f"peak GPU {_gib(e)} GiB."
            )
        if "catalog" in r:
            c = r["catalog"]
            lines[-1] += (
                f" Catalog build **{c['predict_s']:.2f} s** ({c['img_per_s']:,.0f} img/s, publishing {c['publish_s']:.2f} s); "
                f"peak GPU {_gib(c)} GiB, peak host RSS {c['peak_host_rss_gib']:.1f} GiB."
            )
    for error in results.get("errors", []):
        lines += ["", f"Failed: {error}"]
    goals = []
    for name, read, goal, test in GOALS:
        try:
            value = read(results)
        except (KeyError, StopIteration):
            continue
        met = "-" if test is None or results["mode"] != "full" else ("yes" if test(value) else "**no**")
        goals.append(f"| {name} | {value:.2f} | {goal} | {met} |")
    if goals:
        lines += ["", "| goal | measured | goal | met |", "|---|---|---|---|", *goals]
    return "\n".join(lines) + "\n"
