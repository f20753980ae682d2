"""The seed-scale epoch and the release scale on one GPU: `bench/gpu.sh` (CPU with --smoke).

The seed trained one epoch of 77,494 CTL triplets (ResNet18, 64 px, batch 64) in 7 hours on a GPU.
This runs the same epoch on synthetic data of that size, for both recipes:

* fine-tuning: the whole ResNet18 trains, every batch embeds its unique products;
* the seed's frozen recipe: backbone features of every product computed once (the feature cache),
  then the head trains on them;

each through both data paths, in the same run, so that every speed-up is a ratio measured here:

* ``loader``: loader workers read the product store and hand pinned batches over (the path before
  the device store, and the CPU default);
* ``device store``: the store's pixels live in GPU memory and a batch is a gather by row id
  (``data.device_store``).

It measures the catalog build (predict of every product, both catalogs written, the device store
loaded afresh) at several predict batch sizes against pure inference at the same sizes, and the
device store's load with one reading thread against several; it records a profiler trace of each
recipe's steps, and repeats the frozen recipe and the catalog build at the real CTL release's scale
(:mod:`ctl_lightning.benchmarks.release_scale`). Its ``compile`` part runs the fine-tuning epoch with
``model.compile`` (two epochs: the first compiles). Results are written after each part into --out:
gpu-results.json, GPU-table.md, profile-*.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch._dynamo.utils import counters

from ctl_lightning.benchmarks import bounds, ddp_sweep, setup
from ctl_lightning.benchmarks.device_waits import reads_by_caller
from ctl_lightning.benchmarks.gpu_report import (
    BENCH_COMPILE_MODES,
    GOAL_PARTS,
    STEPS_PER_CALL,
    measured_epoch,
    profile_name,
    step_label,
    table,
)
from ctl_lightning.benchmarks.machine import machine_info
from ctl_lightning.benchmarks.release_scale import replicate_ctl
from ctl_lightning.data import device_store as resident_pixels
from ctl_lightning.data.datamodules import TripletsDataModule
from ctl_lightning.data.sources import CtlSource, SyntheticCtl
from ctl_lightning.data.store import ProductStore
from ctl_lightning.retrieval.writer import CatalogWriter

SEED_TRIPLETS = 77_494
PATHS = {"loader": False, "device store": True}  # data.device_store of each data path
# --parts: seed-scale epochs and profiles, seed-scale catalog builds and profile, what bounds the frozen
# step (benchmarks/bounds.py), release scale, the README's sweep of DDP jobs (issue 10) on this
# machine's GPUs, and the fine-tuning epoch with model.compile (its compilation takes minutes: its own call)
PARTS = ("epochs", "catalog", "bounds", "release", "ddp_sweep", "compile")
# The catalog part's predict batch sizes through the device store, in multiples of the eval batch size
# (1,024 on a GPU): the host's cost a batch (Lightning's predict loop, the writer) is paid fewer times.
CATALOG_BATCHES = (1, 4, 8)
RELEASE_COPIES = 5  # 20,000 seed-scale outfits listed 5 times: about the release's 107,000 outfits


def _datamodule(source, triplets: int | None, image_size: int, batch_size: int, workers: int, gpu: bool) -> TripletsDataModule:
    """The datamodule of ``source``; ``triplets``: keep that many training triplets (the seed's epoch)."""
    outfits = len({spec.group for spec in source.product_specs()[0] if spec.split == "train"})
    per_outfit = int(np.ceil(triplets / (0.97 * outfits))) if triplets else 4
    dm = TripletsDataModule(
        source,
        image_size=image_size,
        batch_size=batch_size,
        eval_batch_size=1024 if gpu else 128,
        num_workers=workers,
        triplets_per_outfit=per_outfit,
        val_fraction=0.02,
        seed=42,
        pin_memory=gpu,
        device_store=False,
    )
    dm.prepare_data()
    dm.setup("fit")
    if triplets:
        if len(dm.train_triplets) < triplets:
            raise SystemExit(f"only {len(dm.train_triplets)} training triplets were sampled, need {triplets}")
        dm.train_triplets = dm.train_triplets[:triplets]
    return dm


def _trainer(gpu: bool, **kwargs) -> pl.Trainer:
    return pl.Trainer(
        accelerator="gpu" if gpu else "cpu",
        devices=1,
        precision="bf16-mixed" if gpu else "32-true",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        **kwargs,
    )


def process_seconds() -> float:
    """Seconds since this process started, its imports included (Linux: /proc)."""
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime, in clock ticks since boot


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _store_load(dm: TripletsDataModule, before) -> float | None:
    """Seconds the device store took to load in the measured call: 0.0 where it was already resident
    (the release catalog build reuses the epoch's), ``None`` on the loader path."""
    if dm.resident is None:
        return None
    return dm.resident.wait() if dm.resident is not before else 0.0


def _memory() -> dict:
    """Peak GPU memory since the last call, and the process's peak resident host memory so far."""
    peak = {"peak_host_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    if torch.cuda.is_available():
        peak["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
    return peak


class _EpochClock(pl.Callback):
    """Wall time of each training epoch itself, apart from fit start (device store, feature cache, baseline)."""

    def __init__(self):
        self.epochs: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module):
        _sync()
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        _sync()
        self.epochs.append(time.perf_counter() - self.start)


class _Profile(pl.Callback):
    """A torch.profiler trace of ``active`` training steps or predict batches after ``skip`` of them;
    its tables are written to ``path``. The summary compares the GPU's kernel time per step with the
    host's time per step (inflated by the profiler itself: compare the kernel time with the unprofiled
    run's ms a step). It also counts the ops a step that need a tensor's data on the host, and those of
    them that waited for the GPU; the file lists each with its callers
    (:func:`~ctl_lightning.benchmarks.device_waits.reads_by_caller`). ``stacks``: the callers include
    Python frames; tracing them slows the profiled steps and more than doubles the events to read
    afterwards (GPU.md, session 17)."""

    def __init__(self, path: Path, skip: int, active: int, steps_per_batch: int = 1, stacks: bool = False):
        self.path, self.skip, self.active = path, skip, active
        self.steps = active * steps_per_batch  # optimizer steps traced (several a batch with model.steps_per_call)
        activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        schedule = torch.profiler.schedule(wait=skip - 1, warmup=1, active=active, repeat=1)
        self.profiler = torch.profiler.profile(activities=activities, schedule=schedule, on_trace_ready=self._write, with_stack=stacks)
        self.summary: dict = {}

    def on_train_start(self, trainer, pl_module):
        self.profiler.start()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.profiler.step()

    def on_train_end(self, trainer, pl_module):
        self.profiler.stop()

    on_predict_start, on_predict_end = on_train_start, on_train_end

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.profiler.step()

    def _write(self, profiler) -> None:
        events = profiler.key_averages()
        # Kernels only: user annotations (ProfilerStep#, Optimizer.step#) also carry device time, the
        # span of their range, as torch's own "Self CUDA time total" leaves them out.
        kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA and not e.is_user_annotation]
        self.summary.update(
            {
                "gpu_kernel_ms_per_step": sum(e.self_device_time_total for e in kernels) / 1000 / self.steps,
                "kernels_per_step": sum(e.count for e in kernels) / self.steps,
                "host_ms_per_step_profiled": sum(e.self_cpu_time_total for e in events) / 1000 / self.steps,
            }
        )
        sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
        reads, self.summary["data_reads_per_step"], self.summary["gpu_waits_per_step"] = reads_by_caller(profiler.events(), self.steps)
        tables = [events.table(sort_by=sort, row_limit=30), events.table(sort_by="cpu_time_total", row_limit=30), reads]
        self.path.write_text("\n\n".join(tables))


def recipe(freeze: bool) -> str:
    return "frozen + feature cache" if freeze else "fine-tuning"


@dataclass(frozen=True)
class Step:
    """How the trainer runs a recipe's steps: one batch a call or ``steps_per_call`` fixed-shape steps
    (the frozen recipe), replayed from a CUDA graph (``cuda_graph``: true or step), compiled
    (``compile``: a torch.compile mode, see :func:`_compiled`), with Adam's fused update."""

    steps_per_call: int | None = None
    cuda_graph: bool | str = False
    compile: str | None = None
    fused_adam: bool = False

    def settings(self, gpu: bool) -> dict:
        """The model's settings (benchmarks/setup.py's ``model``)."""
        step = {"steps_per_call": self.steps_per_call, "cuda_graph": self.cuda_graph, "fused_adam": self.fused_adam}
        return step | _compiled(self.compile, gpu)

    def label(self, gpu: bool) -> str:
        return step_label(self.steps_per_call, self.cuda_graph, _compiled(self.compile, gpu).get("compile"), self.fused_adam)


PLAIN = Step()
# The release scale's epoch: the fastest frozen step measured on a GPU (GPU.md, session 13; the eager step
# took 26.67 s there against 7.32 s for the forward and backward replayed from a CUDA graph).
RELEASE_STEP = Step(STEPS_PER_CALL, cuda_graph=True, fused_adam=True)


@contextmanager
def _recipe(dm: TripletsDataModule, gpu: bool, freeze: bool, device_store: bool, step: Step):
    """ResNet18 for a recipe, the whole network training or the frozen backbone feeding the feature
    cache, with the data module set for its data path and step; its grouping of batches reset after."""
    dm.load_images, dm.device_store, dm.steps_per_call = True, device_store, step.steps_per_call
    try:
        yield setup.model(
            "resnet18",
            pretrained=False,
            freeze_backbone=freeze,
            feature_cache="auto",
            embed_batch_size=dm.eval_batch_size,
            **step.settings(gpu),
        )
    finally:
        dm.steps_per_call = None


def _steps(dm: TripletsDataModule) -> int:
    return int(np.ceil(len(dm.train_triplets) / dm.batch_size))


def epoch(dm: TripletsDataModule, gpu: bool, freeze: bool, device_store: bool, step: Step = PLAIN) -> dict:
    """One measured training epoch of a recipe through a data path with a trainer step. A compiled
    step runs two epochs: the first compiles, the second is the one shown."""
    clock = _EpochClock()
    callbacks = [*setup.fit_callbacks(dm), clock]
    trainer = _trainer(gpu, max_epochs=1 if step.compile is None else 2, callbacks=callbacks)
    with _recipe(dm, gpu, freeze, device_store, step) as model:
        _memory()
        counters.clear()
        resident = dm.resident
        start = time.perf_counter()
        trainer.fit(model, datamodule=dm)
        total = time.perf_counter() - start
    result = {
        "recipe": recipe(freeze),
        "step": step.label(gpu),
        "path": "device store" if device_store else "loader",
        "triplets": len(dm.train_triplets),
        "steps": _steps(dm),
        "epoch_s": clock.epochs[-1],
        "fit_start_s": total - sum(clock.epochs),
        "device_store_load_s": _store_load(dm, resident),
        "feature_cache_s": callbacks[0].seconds if model.cached_features is not None else None,
        "triplets_per_s": len(dm.train_triplets) / clock.epochs[-1],
        **_memory(),
    }
    if step.compile is not None:
        # Dynamo's and inductor's own counts for this fit: graphs, graph breaks, cache hits, and on a GPU
        # any CUDA graph it skipped (inductor's cudagraph_skips) and why (logged).
        compiler = {group: dict(values) for group, values in counters.items() if values and group != "aten_mm_info"}
        result |= {"first_epoch_s": clock.epochs[0], "compile_backend": model.compile_backend, "compiler_counters": compiler}
    return result


def _compiled(compile: str | None, gpu: bool) -> dict:
    """The model's compile settings: ``compile`` with inductor on a GPU; on the CPU (--smoke) the
    aot_eager backend, which traces the same graph without building kernels (minutes here)."""
    if compile is None:
        return {}
    return {"compile": compile, "compile_backend": "inductor"} if gpu else {"compile": "default", "compile_backend": "aot_eager"}


def warm_up(dm: TripletsDataModule, gpu: bool) -> None:
    """A few fine-tuning steps through each data path before anything is timed, so that no measured
    run pays for CUDA, cuDNN and oneDNN start-up (the first run would otherwise look slowest)."""
    for device_store in PATHS.values():
        dm.load_images, dm.device_store = True, device_store
        model = setup.model("resnet18", pretrained=False, freeze_backbone=False, feature_cache=False)
        _trainer(gpu, max_epochs=1, limit_train_batches=20 if gpu else 2).fit(model, datamodule=dm)


def profile_steps(dm: TripletsDataModule, gpu: bool, freeze: bool, path: Path, step: Step = PLAIN) -> dict:
    """A profiler trace of 30 trainer calls after 50 (fewer with --smoke, or with ``steps_per_call``)
    through the device store, in a fit of its own so that the profiler's cost stays out of the measured
    epochs; the tables go to ``path``, the summary is per optimizer step. With ``compile`` the first
    step compiles."""
    per_call = step.steps_per_call or 1
    calls = int(np.ceil(_steps(dm) / per_call))
    # Python frames for the compiled step only: session 13's trace of it held reads of unknown origin.
    skip, active = max(1, min(50, calls // 4)), max(1, min(30, calls // 4))
    profiler = _Profile(path, skip, active, steps_per_batch=per_call, stacks=step.compile is not None)
    trainer = _trainer(
        gpu, max_epochs=1, limit_train_batches=profiler.skip + profiler.active + 1, callbacks=[*setup.fit_callbacks(dm), profiler]
    )
    with _recipe(dm, gpu, freeze, True, step) as model:
        trainer.fit(model, datamodule=dm)
    return {"file": path.name, **profiler.summary}


def catalog_build(dm: TripletsDataModule, gpu: bool, device_store: bool, profile: Path | None = None) -> dict:
    """Predict of every product with both catalogs written; ``profile``: instead, trace 20 batches after
    20 (fewer with --smoke) into that file, in a predict of its own so that the measured one stays clean."""
    dm.load_images, dm.device_store = True, device_store
    model = setup.model("resnet18", pretrained=False, feature_cache=False, embed_batch_size=dm.eval_batch_size)
    batches = int(np.ceil(len(dm.predict_rows) / dm.eval_batch_size))
    profiler = None if profile is None else _Profile(profile, skip=max(1, min(20, batches // 4)), active=max(1, min(20, batches // 4)))
    with tempfile.TemporaryDirectory() as tmp:
        writer = CatalogWriter(Path(tmp) / "catalogs", dm, run_dir=tmp)
        trainer = _trainer(gpu, callbacks=[writer] + ([profiler] if profiler else []))
        _memory()
        resident = dm.resident
        start = time.perf_counter()
        trainer.predict(model, datamodule=dm, return_predictions=False)
        predict_s = time.perf_counter() - start
    products = len(dm.predict_rows)
    if profiler is not None:
        return {"file": profile.name, "batch_size": dm.eval_batch_size, "predict_s (profiled)": predict_s, **profiler.summary}
    return {
        "path": "device store" if device_store else "loader",
        "batch_size": dm.eval_batch_size,
        "products": products,
        "predict_s": predict_s,
        "device_store_load_s": _store_load(dm, resident),
        "publish_s": writer.merge_seconds,
        "img_per_s": products / predict_s,
        **_memory(),
    }


def _at_batch_sizes(dm: TripletsDataModule, measure, *args) -> list[dict]:
    """``measure(dm, *args)`` at each of CATALOG_BATCHES' predict batch sizes, the data module's restored after."""
    size, out = dm.eval_batch_size, []
    try:
        for factor in CATALOG_BATCHES:
            dm.eval_batch_size = factor * size
            out.append(measure(dm, *args))
    finally:
        dm.eval_batch_size = size
    return out


def catalog_builds(dm: TripletsDataModule, gpu: bool) -> list[dict]:
    """The catalog build through the loader, then through the device store at each predict batch size,
    each loading the store afresh, as a predict in a new process does."""

    def fresh_store(dm: TripletsDataModule, gpu: bool) -> dict:
        dm.resident = None
        return catalog_build(dm, gpu, device_store=True)

    return [catalog_build(dm, gpu, device_store=False), *_at_batch_sizes(dm, fresh_store, gpu)]


def store_load_threads(store: ProductStore, gpu: bool, repeats: int = 3) -> dict:
    """The device store's load (the whole store, read and copied where predict runs) with one reading
    thread against ``LOAD_THREADS``, alternated, median of ``repeats`` each."""
    device = torch.device("cuda" if gpu else "cpu")
    default = resident_pixels.LOAD_THREADS
    seconds = {1: [], default: []}
    for _ in range(repeats):
        for threads, times in seconds.items():
            start = time.perf_counter()
            resident_pixels.ResidentPixels.load(store, device, share=1.0, threads=threads).wait()
            times.append(time.perf_counter() - start)
    one, many = (float(np.median(times)) for times in seconds.values())
    gib = len(store) * store.size**2 * 3 / 2**30
    return {"gib": gib, "threads": default, "one_thread_s": one, "threads_s": many, "speedup": one / many}


def pure_inference(dm: TripletsDataModule, gpu: bool) -> dict:
    """The bound of a catalog build: the model alone on uint8 batches already in host memory or on the
    device, at the data module's predict batch size."""
    device = torch.device("cuda" if gpu else "cpu")
    model = setup.model("resnet18", pretrained=False, feature_cache=False).to(device).eval()
    if gpu:
        model.backbone.to(memory_format=torch.channels_last)
    rows, size = dm.predict_rows, dm.eval_batch_size
    host = [torch.from_numpy(dm.store.read(rows[i : i + size])) for i in range(0, len(rows), size)]
    host = [x.pin_memory() for x in host] if gpu else host
    resident = [x.to(device) for x in host]

    def run(batches) -> float:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=gpu):
            for x in batches[:2]:
                model.head(model.backbone(model.preprocess(x)))  # warm-up
            _sync()
            start = time.perf_counter()
            for x in batches:
                model.head(model.backbone(model.preprocess(x)))
            _sync()
            return time.perf_counter() - start

    return {"batch_size": size, "host_img_per_s": len(rows) / run(host), "device_img_per_s": len(rows) / run(resident)}


def bounds_part(dm: TripletsDataModule, gpu: bool, trainer_epoch: dict | None) -> dict:
    """benchmarks/bounds.py's floors of the frozen recipe's step next to the trainer's own epoch
    (``trainer_epoch``, where the epochs part measured it in this run; else measured here)."""
    out = {"lightning": trainer_epoch or epoch(dm, gpu, freeze=True, device_store=True)}
    return out | bounds.step_floor(np.asarray(dm.train_triplets), len(dm.store), dm.batch_size, gpu)


def seed_scale(
    results: dict, out: Path, data: Path, smoke: bool, gpu: bool, save, parts: set[str]
) -> tuple[TripletsDataModule, Callable[[], None]]:
    outfits, triplets, size, batch = (150, 128, 32, 16) if smoke else (20_000, SEED_TRIPLETS, 64, 64)
    workers = 0 if smoke else min(8, os.cpu_count() or 1)
    start = time.perf_counter()
    # The STL scenes generated with the CTL outfits serve no part here: a handful with --smoke.
    source = SyntheticCtl(data, seed=0, outfits=outfits, **({"scenes": 10} if smoke else {}))
    dm = _datamodule(source, triplets, size, batch, workers, gpu)
    # On the CPU oneDNN builds kernels for each new batch shape, seconds a step in a tiny run: the smoke
    # run keeps every triplet member (one shape); the tests cover deduplication on both paths.
    dm.dedup = not smoke
    save()
    results["data"] = {
        "outfits": outfits,
        "products": len(dm.store),
        "image_size": size,
        "batch_size": batch,
        "workers": workers,
        "seconds": time.perf_counter() - start,
    }
    warm_up(dm, gpu)
    results["epochs"], results["catalog"], results["profiles"] = [], [], {}

    def part(into: list | dict, key: str | None, measure, *args, **kwargs) -> None:
        """One measurement; a failure is recorded (and raised with --smoke) while the others still run."""
        try:
            value = measure(*args, **kwargs)
        except Exception as error:
            results["errors"].append(f"{measure.__name__}{args[2:]}{kwargs or ''}: {type(error).__name__}: {error}")
            save()
            if not gpu:
                raise
            return
        if key is None:
            into.append(value)
        else:
            into[key] = value
        save()

    # The frozen recipe's fixed-shape steps, the last also traced: on a GPU the CUDA graphs only (the
    # eager fixed-shape step, 9.3 s on an H200, is the CPU's), the graph of the whole step, not yet run on
    # a GPU, last.
    graphs = ((True, True), ("step", False), ("step", True)) if gpu else ((False, False), (False, True))
    fixed_shape = [Step(STEPS_PER_CALL, cuda_graph, fused_adam=fused) for cuda_graph, fused in graphs]
    for freeze in (False, True) if "epochs" in parts else ():
        for device_store in PATHS.values():
            part(results["epochs"], None, epoch, dm, gpu, freeze, device_store)
        for step in fixed_shape if freeze else ():
            part(results["epochs"], None, epoch, dm, gpu, freeze, True, step)
        # What bounds the fastest step measured; on a GPU the eager step's trace is session 13's (GPU.md).
        traced = [] if gpu else [(PLAIN, f"profile-{'frozen' if freeze else 'finetune'}.txt")]
        traced += [(fixed_shape[-1], "profile-frozen-fixed-shape.txt")] if freeze else []
        for step, file in traced:
            part(results["profiles"], profile_name(recipe(freeze), step.label(gpu)), profile_steps, dm, gpu, freeze, out / file, step)
    # The compiled fine-tuning step with fused Adam on a GPU (without it, 7.11 s against 5.84 s on an
    # H200: GPU.md, session 13), and what bounds it: traced last of the whole script (it compiles again,
    # from inductor's cache), since its trace takes Python frames, which have frozen compiled programs.
    modes = (BENCH_COMPILE_MODES if gpu else BENCH_COMPILE_MODES[:1]) if "compile" in parts else ()
    compiled = [Step(compile=mode, fused_adam=gpu) for mode in modes]
    for step in compiled:
        part(results["epochs"], None, epoch, dm, gpu, False, True, step)
    if "catalog" in parts:
        part(results, "store_load_threads", store_load_threads, dm.store, gpu)
        part(results, "catalog", catalog_builds, dm, gpu)
        part(results, "pure_inference", _at_batch_sizes, dm, pure_inference, gpu)
        part(results["profiles"], "catalog build", catalog_build, dm, gpu, True, out / "profile-predict.txt")
    if "bounds" in parts:
        try:
            trainer_epoch = measured_epoch(results, recipe(True), "device store")
        except StopIteration:  # the epochs part did not run
            trainer_epoch = None
        part(results, "bounds", bounds_part, dm, gpu, trainer_epoch)

    def trace_compiled() -> None:
        for step in compiled:
            trace = out / f"profile-finetune-{_compiled(step.compile, gpu)['compile']}.txt"
            part(results["profiles"], profile_name(recipe(False), step.label(gpu)), profile_steps, dm, gpu, False, trace, step)

    return dm, trace_compiled


def release_scale(results: dict, seed_dm: TripletsDataModule, data: Path, gpu: bool, save) -> None:
    """The frozen recipe and the catalog build over the seed-scale world listed RELEASE_COPIES times."""
    start = time.perf_counter()
    root = replicate_ctl(seed_dm.source.root, data / f"release-x{RELEASE_COPIES}" / "ctl", RELEASE_COPIES)
    listed = time.perf_counter() - start
    start = time.perf_counter()
    dm = _datamodule(CtlSource(root), None, seed_dm.image_size, seed_dm.batch_size, seed_dm.num_workers, gpu)
    store_s = time.perf_counter() - start
    store = dm.store
    results["release"] = release = {
        "outfits": len(set(store.table.groups.tolist())),
        "products": len(store),
        "store_gib": len(store) * store.size**2 * 3 / 2**30,
        "annotations_s": listed,
        "store_build_s (includes reading annotations, sampling triplets)": store_s,
    }
    save()
    try:  # the frozen recipe's epoch, with the fastest step measured on a GPU; a failure is recorded, the catalog still builds
        release["epoch"] = epoch(dm, gpu, True, True, RELEASE_STEP if gpu else Step(STEPS_PER_CALL))
    except Exception as error:
        results["errors"].append(f"release epoch: {type(error).__name__}: {error}")
        if not gpu:
            raise
    save()
    release["catalog"] = catalog_build(dm, gpu, device_store=True)
    save()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench/gpu.sh", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: checks the script end to end")
    parser.add_argument("--out", default="experiments/benchmarks/gpu")
    parser.add_argument("--data", default=".bench-data")
    parser.add_argument(
        "--parts", default=",".join(GOAL_PARTS), help=f"comma-separated, of {', '.join(PARTS)} (default: {','.join(GOAL_PARTS)})"
    )
    args = parser.parse_args(argv)
    gpu = torch.cuda.is_available() and not args.smoke
    if not gpu and not args.smoke:
        raise SystemExit("bench/gpu.sh: no GPU found; use --smoke to check the script on the CPU")
    torch.set_float32_matmul_precision("high")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"mode": "smoke (CPU)" if args.smoke else "full", "machine": machine_info()}

    def save() -> None:
        results["script_s"] = process_seconds()  # the whole-script time, up to the latest result
        (out / "gpu-results.json").write_text(json.dumps(results, indent=2) + "\n")
        (out / "GPU-table.md").write_text(table(results))

    parts = set(args.parts.split(","))
    if parts - set(PARTS):
        raise SystemExit(f"bench/gpu.sh: unknown --parts {sorted(parts - set(PARTS))}; choose from {', '.join(PARTS)}")
    results["parts"], results["errors"] = sorted(parts), []
    if "ddp_sweep" in parts:
        Path(args.data).mkdir(parents=True, exist_ok=True)
        try:
            results["ddp_sweep"] = ddp_sweep.run(Path(tempfile.mkdtemp(prefix="ddp-sweep-", dir=args.data)), gpu)
        except Exception as error:  # recorded, as part() records a failure; the other parts still run
            results["errors"].append(f"ddp sweep: {type(error).__name__}: {error}")
            if not gpu:
                raise
        save()
    if not parts & {"epochs", "catalog", "bounds", "release", "compile"}:
        print(table(results))
        return
    dm, trace_compiled = seed_scale(results, out, Path(args.data), args.smoke, gpu, save, parts)
    if "release" in parts:
        try:
            release_scale(results, dm, Path(args.data), gpu, save)
        except Exception as error:  # the seed-scale results stand; the release part's failure is recorded
            results["errors"].append(f"release scale: {type(error).__name__}: {error}")
            save()
            raise
    trace_compiled()
    print(table(results))


if __name__ == "__main__":
    main()
