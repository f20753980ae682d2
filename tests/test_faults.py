"""The fault matrix of issue 11: what a hostile user, a killed job or a damaged disk does to the project.

Every case must end in a clean result or in a one-line error (exit status 2) that names the file at
fault: never a hang, a traceback, a lost output or a silently wrong answer. The cases:

* kill -9 (and SIGTERM, Ctrl-C) at several points of ``prepare``, of ``train.py`` (store build, fit,
  predict), then the next run;
* a full disk, for the store and a catalog (a small tmpfs when run as root; otherwise skipped, and the
  same path is driven by a simulated ``ENOSPC``);
* every kind of damaged store, catalog, checkpoint and manifest, and NaN embeddings;
* moving a run folder, and its data;
* every bad config value;
* a decompression bomb, as a query image and inside a dataset;
* any byte string given to the CTL, STL, triplet and FITB readers (hypothesis).
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import selectors
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import REPO, TINY, compose_config, default_sigint, run_script, script_paths
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import ctl_lightning.io as ctl_io
from ctl_lightning.cli.data import main as data_main
from ctl_lightning.cli.recommend import main as recommend_main
from ctl_lightning.config_checks import validate
from ctl_lightning.data.formats import (
    read_ctl_fitb,
    read_ctl_raw,
    read_ctl_triplets,
    read_stl_categories,
    read_stl_products,
)
from ctl_lightning.data.formats.common import ParseResult, RowPolicy
from ctl_lightning.data.store import ProductStore
from ctl_lightning.data.synthetic import SynthConfig, generate
from ctl_lightning.errors import CtlError, DataFormatError
from ctl_lightning.losses.softtriple import SameClassCentersRegularizer
from ctl_lightning.losses.triplet import TripletLoss
from ctl_lightning.models.checkpoint import load_checkpoint
from ctl_lightning.retrieval.catalog import KINDS, Catalog
from ctl_lightning.retrieval.embedder import open_image
from ctl_lightning.retrieval.merge import Shard, write_catalog
from ctl_lightning.retrieval.recommend import Recommender
from ctl_lightning.retrieval.render import Thumbnails
from ctl_lightning.retrieval.writer import CatalogWriter
from ctl_lightning.serve.sample_run import RANDOM_DIM, small_store, write_run_catalogs

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_SILENT": "true"}
TESTS_ENV = {**ENV, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}  # for fault_injection
DIM = RANDOM_DIM  # the width of write_run_catalogs' random vectors


# --- helpers ---------------------------------------------------------------------------------------


def leftovers(folder: Path) -> list[str]:
    """Temporary and old folders that killed runs may leave next to their outputs."""
    return sorted(p.name for p in folder.glob(".*") if re.search(r"\.(tmp|old)-\d+$", p.name))


def dead_pid() -> int:
    """The PID of a process that has exited (as left in the name of a killed run's folder)."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except FileNotFoundError:  # the thread ended after the listing: it has no children
            continue
    return found


def running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a dead process not yet reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def read_until(process: subprocess.Popen, text: str, timeout: float) -> str:
    """The process's stderr up to the first occurrence of ``text``, which must come within ``timeout``."""
    selector = selectors.DefaultSelector()
    selector.register(process.stderr, selectors.EVENT_READ)
    seen, deadline = b"", time.monotonic() + timeout
    while text.encode() not in seen:
        if time.monotonic() > deadline or not selector.select(timeout=deadline - time.monotonic()):
            raise AssertionError(f"{text!r} not said within {timeout} s; stderr so far: {seen.decode()[-2000:]}")
        chunk = os.read(process.stderr.fileno(), 65536)
        if not chunk:
            raise AssertionError(f"process ended without saying {text!r}: {seen.decode()[-2000:]}")
        seen += chunk
    return seen.decode()


def one_line_error(stderr: str, program: str) -> str:
    """The single ``program: error: ...`` line of ``stderr``; a traceback fails the test."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith(f"{program}: error:")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def run_cli(main, argv: list[str], capsys) -> tuple[int, str]:
    """Exit status and stderr of a CLI run in this process."""
    try:
        main(argv)
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code
    return code, capsys.readouterr().err


def prepare_command(folder: Path, store_dir: Path, size: int, workers: int = 2, slowed: bool = False) -> list[str]:
    """``ctl-data prepare``; ``slowed``: each decode takes 50 ms longer, so a kill lands mid-build on any host."""
    program = ["-c", "import fault_injection; fault_injection.slow_data_cli()"] if slowed else ["-m", "ctl_lightning.cli.data"]
    return [sys.executable, *program, "prepare", str(folder), "--size", str(size), "--workers", str(workers), "--store-dir", str(store_dir)]


def bomb_png(path: Path, side: int = 30000) -> Path:
    """A tiny PNG whose header claims side x side pixels (by default over Pillow's decompression-bomb limit)."""
    buffer = io.BytesIO()
    Image.new("1", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    struct.pack_into(">II", data, 16, side, side)  # IHDR's width and height
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    """A small toy-world CTL folder (150 outfits, about 700 products)."""
    out = tmp_path_factory.mktemp("toy") / "toy"
    generate(SynthConfig(out=out, world="toy", outfits=150, styles=16, scenes=10, workers=1))
    return out / "ctl"


# --- kill -9 during prepare --------------------------------------------------------------------------

MOMENTS = {
    # The lock is taken and its holder's PID written, before any worker exists.
    "lock taken": lambda store_dir, pid: (
        (store_dir / "ctl-160px.lock").is_file() and (store_dir / "ctl-160px.lock").read_text().strip() == str(pid)
    ),
    # Spawned decoder workers are up.
    "workers started": lambda store_dir, pid: len(children(pid)) >= 2,
    # Crops are being written into the temporary folder's reserved file.
    "crops being written": lambda store_dir, pid: any(store_dir.glob(".ctl-160px.tmp-*/images.u8")),
}


@pytest.mark.slow
@pytest.mark.parametrize(
    "sig, moment",
    [
        (signal.SIGKILL, "lock taken"),
        (signal.SIGKILL, "workers started"),
        (signal.SIGKILL, "crops being written"),
        (signal.SIGTERM, "crops being written"),
        (signal.SIGINT, "crops being written"),
    ],
)
def test_prepare_killed_at_any_moment_leaves_nothing_that_blocks_the_next_run(toy, tmp_path, sig, moment):
    store_dir = tmp_path / "stores"
    command = prepare_command(toy, store_dir, 160)
    slowed = prepare_command(toy, store_dir, 160, slowed=True)
    process = subprocess.Popen(slowed, env=TESTS_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=default_sigint)
    wait_for(lambda: MOMENTS[moment](store_dir, process.pid) or process.poll() is not None, 60, moment)
    assert process.poll() is None, "prepare finished before the kill; the test no longer tests anything"
    workers = children(process.pid)
    process.send_signal(sig)
    stderr = process.communicate(timeout=30)[1].decode()
    if sig == signal.SIGINT:
        assert process.returncode == 130 and "Traceback" not in stderr and "ctl-data: interrupted" in stderr
    else:
        assert process.returncode == -sig
    wait_for(lambda: not any(running(w) for w in workers), 10, "the workers to die with their parent")
    start = time.monotonic()
    again = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=120, check=False)
    assert again.returncode == 0, again.stderr[-3000:]
    assert time.monotonic() - start < 90
    assert len(ProductStore.open(store_dir / "ctl-160px")) > 0
    assert leftovers(store_dir) == []


@pytest.mark.slow
def test_a_waiting_prepare_names_the_process_holding_the_lock(toy, tmp_path):
    store_dir = tmp_path / "stores"
    hold = (
        "import sys, time; from pathlib import Path; from ctl_lightning.io import exclusive_lock\n"
        "with exclusive_lock(Path(sys.argv[1])):\n    print('locked', flush=True); time.sleep(120)"
    )
    holder = subprocess.Popen([sys.executable, "-c", hold, str(store_dir / "ctl-16px")], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        process = subprocess.Popen(
            prepare_command(toy, store_dir, 16, workers=1), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        said = read_until(process, f"waiting for process {holder.pid} (running)", timeout=20)
        assert str(store_dir / "ctl-16px.lock") in said
    finally:
        holder.kill()
        holder.wait()
    process.communicate(timeout=60)
    assert process.returncode == 0


def test_leftover_folders_of_killed_runs_are_removed_by_the_next_run(toy, tmp_path):
    store = small_store(toy, tmp_path / "stores")
    dead, alive = dead_pid(), os.getppid()
    for tag in ("tmp", "old"):
        (store.path.with_name(f".{store.path.name}.{tag}-{dead}") / "junk").mkdir(parents=True)
    in_use = store.path.with_name(f".{store.path.name}.tmp-{alive}")  # a live process's build: kept
    in_use.mkdir()
    small_store(toy, tmp_path / "stores")  # the store is current: only the leftovers go
    assert leftovers(store.path.parent) == [in_use.name]
    run = write_run_catalogs(tmp_path / "run", store)
    for tag in ("tmp", "old"):
        (run / "catalogs" / f".similar.{tag}-{dead}").mkdir()
    write_run_catalogs(run, store)
    assert leftovers(run / "catalogs") == []


# --- a full disk ---------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path) -> Path:
    """A 2 MB tmpfs: a real full disk, for the store's memory map and the catalog writer."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root; test_a_full_disk_simulated covers the same path without it")
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def used_bytes(mount: Path) -> int:
    stats = os.statvfs(mount)
    return (stats.f_blocks - stats.f_bfree) * stats.f_frsize


def test_prepare_on_a_full_disk_is_a_one_line_error_and_frees_the_space(toy, small_disk):
    before = used_bytes(small_disk)
    result = subprocess.run(
        prepare_command(toy, small_disk, 64, workers=1), env=ENV, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 2, result.stderr[-3000:]  # not SIGBUS (135)
    line = one_line_error(result.stderr, "ctl-data")
    assert str(small_disk / "ctl-64px") in line and re.search(r"needs [\d,]+ bytes", line)
    assert [p.name for p in small_disk.iterdir()] == ["ctl-64px.lock"]  # the reserved crops are gone
    assert used_bytes(small_disk) - before <= os.statvfs(small_disk).f_frsize  # the lock file's one block


def test_a_catalog_on_a_full_disk_is_an_error_and_frees_the_space(toy, tmp_path, small_disk):
    store = small_store(toy, tmp_path / "stores")
    rows = store.table.positions
    shard = tmp_path / "big.bin"
    np.ones((len(rows), 1024), dtype=np.float32).tofile(shard)  # about 3 MB
    before = used_bytes(small_disk)
    with pytest.raises(CtlError, match=r"similar: not enough disk space .* needs [\d,]+ bytes"):
        write_catalog(small_disk / "similar", rows, [Shard(rows, shard, 1024)], store.table, {})
    assert list(small_disk.iterdir()) == [] and used_bytes(small_disk) == before


def test_a_full_disk_simulated(toy, tmp_path, monkeypatch):
    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ctl_io.os, "posix_fallocate", no_space)
    with pytest.raises(CtlError, match=r"ctl-16px: not enough disk space .* needs [\d,]+ bytes"):
        small_store(toy, tmp_path / "stores")
    assert list((tmp_path / "stores").iterdir()) == [tmp_path / "stores" / "ctl-16px.lock"]


# --- damaged artifacts ---------------------------------------------------------------------------


@pytest.fixture
def fake_run(toy, tmp_path) -> Path:
    return write_run_catalogs(tmp_path / "run", small_store(toy, tmp_path / "stores"))


def _rewrite_manifest(change):
    def damage(path: Path) -> None:
        manifest = json.loads(path.read_text())
        change(manifest)
        path.write_text(json.dumps(manifest))

    return damage


def _nonfinite(value: float):
    def damage(path: Path) -> None:
        values = np.load(path)
        values[3, 1] = value
        np.save(path, values)

    return damage


CATALOG_DAMAGE = {
    "truncated embeddings": ("embeddings.npy", lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])),
    "embeddings not a .npy": ("embeddings.npy", lambda p: p.write_bytes(b"garbage" * 100)),
    "missing embeddings": ("embeddings.npy", Path.unlink),
    "embeddings of another width": ("embeddings.npy", lambda p: np.save(p, np.ones((len(np.load(p)), DIM + 1), np.float32))),
    "embeddings as float64": ("embeddings.npy", lambda p: np.save(p, np.load(p).astype(np.float64))),
    "a NaN embedding": ("embeddings.npy", _nonfinite(np.nan)),
    "an infinite embedding": ("embeddings.npy", _nonfinite(np.inf)),
    "missing row ids": ("row_ids.npy", Path.unlink),
    "row ids as floats": ("row_ids.npy", lambda p: np.save(p, np.load(p).astype(np.float64))),
    "row ids out of order": ("row_ids.npy", lambda p: np.save(p, np.load(p)[::-1].copy())),
    "manifest not JSON": ("manifest.json", lambda p: p.write_text("{not json")),
    "manifest a list": ("manifest.json", lambda p: p.write_text("[1, 2]")),
    "manifest without kind": ("manifest.json", _rewrite_manifest(lambda m: m.pop("kind"))),
    "manifest count a string": ("manifest.json", _rewrite_manifest(lambda m: m.update(count=str(m["count"])))),
    "manifest count wrong": ("manifest.json", _rewrite_manifest(lambda m: m.update(count=m["count"] + 1))),
    "manifest without model fingerprint": ("manifest.json", _rewrite_manifest(lambda m: m["model"].pop("state_fingerprint"))),
    "missing products.tsv": ("products.tsv", Path.unlink),
    "products.tsv with a bad row": ("products.tsv", lambda p: p.write_text(p.read_text() + "x\ty\n")),
    "products.tsv with a bad number": ("products.tsv", lambda p: p.write_text(p.read_text().replace("\n1\t", "\none\t", 1))),
    "products.tsv not UTF-8": ("products.tsv", lambda p: p.write_bytes(p.read_bytes() + b"\xff\xfe\n")),
}


@pytest.mark.parametrize("case", CATALOG_DAMAGE)
def test_a_damaged_catalog_is_a_one_line_error_naming_the_file(fake_run, tmp_path, capsys, case):
    name, damage = CATALOG_DAMAGE[case]
    damage(fake_run / "catalogs" / "similar" / name)
    code, stderr = run_cli(
        recommend_main, ["similar", "--catalog", str(fake_run), "--product", "1", "--out", str(tmp_path / "out")], capsys
    )
    assert code == 2
    assert str(fake_run / "catalogs" / "similar" / name) in one_line_error(stderr, "ctl-recommend")


STORE_DAMAGE = {
    "manifest not JSON": ("manifest.json", lambda p: p.write_text("{")),
    "manifest without size": ("manifest.json", _rewrite_manifest(lambda m: m.pop("size"))),
    "manifest size a string": ("manifest.json", _rewrite_manifest(lambda m: m.update(size="16"))),
    "missing images": ("images.u8", Path.unlink),
    "truncated images": ("images.u8", lambda p: p.write_bytes(p.read_bytes()[:100])),
    "missing products.tsv": ("products.tsv", Path.unlink),
    "products.tsv with a bad row id": ("products.tsv", lambda p: p.write_text(p.read_text().replace("\n0\t", "\nzero\t", 1))),
}


@pytest.mark.parametrize("case", STORE_DAMAGE)
def test_a_damaged_store_is_a_one_line_error_and_prepare_rebuilds_it(toy, tmp_path, capsys, case):
    store = small_store(toy, tmp_path / "stores")
    name, damage = STORE_DAMAGE[case]
    damage(store.path / name)
    with pytest.raises(CtlError, match=re.escape(str(store.path / name))):
        ProductStore.open(store.path)
    assert small_store(toy, tmp_path / "stores").fingerprint == store.fingerprint


def _checkpoint(path: Path, content) -> Path:
    torch.save(content, path)
    return path


CHECKPOINT_DAMAGE = {
    "truncated": lambda p: p.write_bytes(_checkpoint(p, {"state_dict": {"w": torch.ones(1000)}}).read_bytes()[:500]),
    "not a checkpoint": lambda p: p.write_bytes(b"\x00garbage" * 50),
    "empty": lambda p: p.write_bytes(b""),
    "no state dict": lambda p: _checkpoint(p, {"epoch": 3}),
    "NaN weights": lambda p: _checkpoint(p, {"state_dict": {"head.weight": torch.tensor([1.0, float("nan")])}}),
    "a pickled object": lambda p: _checkpoint(p, {"state_dict": {"w": torch.ones(2)}, "extra": Path("x")}),
}


@pytest.mark.parametrize("case", CHECKPOINT_DAMAGE)
def test_a_damaged_checkpoint_is_a_one_line_error_naming_the_file(tmp_path, case):
    path = tmp_path / "last.ckpt"
    CHECKPOINT_DAMAGE[case](path)
    with pytest.raises(CtlError, match=re.escape(str(path))) as error:
        load_checkpoint(path)
    assert "\n" not in str(error.value)


def test_nan_embeddings_are_refused_when_a_catalog_is_written(toy, tmp_path):
    store = small_store(toy, tmp_path / "stores")
    vectors = np.ones((len(store), DIM), np.float32)
    vectors[5] = np.nan
    with pytest.raises(CtlError, match=r"non-finite embeddings .* store rows \[5\]"):
        write_run_catalogs(tmp_path / "run", store, {"similar": vectors, "compatible": vectors.copy()})
    assert not (tmp_path / "run" / "catalogs" / "similar").exists() and leftovers(tmp_path / "run" / "catalogs") == []


def test_recommendations_json_is_strict(fake_run, tmp_path, capsys):
    code, stderr = run_cli(
        recommend_main, ["complementary", "--catalog", str(fake_run), "--product", "2", "--out", str(tmp_path / "out")], capsys
    )
    assert code == 0, stderr

    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")

    payload = json.loads((tmp_path / "out" / "recommendations.json").read_text(), parse_constant=refuse)
    assert all(np.isfinite(item["score"]) for item in payload["items"])


def test_a_moved_dataset_is_found_with_data_root_and_a_missing_one_is_said(fake_run, tmp_path):
    recommender = Recommender(fake_run)
    store = recommender.store_path()
    moved = tmp_path / "moved-data"
    shutil.copytree(store.parent, moved)  # the fake run's dataset folder is the store's parent
    shutil.rmtree(store)
    assert "--data-root" in Thumbnails.of(recommender).problem
    relocated = Recommender(fake_run, data_root=moved)
    assert relocated.store_path() == moved / store.name and Thumbnails.of(relocated).problem is None


# --- config values -----------------------------------------------------------------------------------

BAD_CONFIG = [
    ("model.embedding_dim=0", "model.embedding_dim"),
    ("model.embedding_dim=-4", "model.embedding_dim"),
    ("model.hidden_dim=0", "model.hidden_dim"),
    ("model.trainable_stages=-1", "model.trainable_stages"),
    ("model.dropout=1.0", "model.dropout"),
    ("model.embed_batch_size=0", "model.embed_batch_size"),
    ("loss.margin=-1", "loss.margin"),
    ("loss.margin=nan", "loss.margin"),
    ("loss.distance=manhattan", "loss.distance"),
    ("optimizer.lr=0", "optimizer.lr"),
    ("optimizer.lr=-0.001", "optimizer.lr"),
    ("optimizer.lr=inf", "optimizer.lr"),
    ("optimizer.weight_decay=-1", "optimizer.weight_decay"),
    ("optimizer=sgd optimizer.momentum=1.5", "optimizer.momentum"),
    ("data.image_size=4", "data.image_size"),
    ("data.image_size=5000", "data.image_size"),
    ("data.image_size=abc", "data.image_size"),
    ("data.batch_size=0", "data.batch_size"),
    ("data.eval_batch_size=-1", "data.eval_batch_size"),
    ("data.num_workers=-1", "data.num_workers"),
    ("data.triplets_per_outfit=0", "data.triplets_per_outfit"),
    ("data.val_fraction=1.0", "data.val_fraction"),
    ("data.source.outfits=5", "data.source.outfits"),
    ("data.source.on_error=ignore", "data.source.on_error"),
    ("trainer.max_epochs=0", "trainer.max_epochs"),
    ("loss=softtriple loss.centers_per_class=1", "loss.centers_per_class"),
    ("loss=softtriple loss.la=0", "loss.la"),
    ("data=synthetic_stl", "no training outfits"),
]


@pytest.mark.parametrize("overrides, named", BAD_CONFIG)
def test_every_bad_config_value_is_refused_before_any_work(tmp_path, overrides, named):
    cfg = compose_config("train", tmp_path, tmp_path / "data", overrides.split())
    with pytest.raises(CtlError, match=re.escape(named)) as error:
        validate(cfg)
    assert "\n" not in str(error.value)


def test_a_softtriple_checkpoint_cannot_embed_products_without_outfits(tmp_path):
    cfg = compose_config("eval", tmp_path, tmp_path / "data", ["loss=softtriple", "data=synthetic_stl"])
    with pytest.raises(CtlError, match="SoftTripleLoss takes its classes from training outfits"):
        validate(cfg)


def test_the_default_configs_are_valid(tmp_path):
    validate(compose_config("train", tmp_path, tmp_path / "data"))
    validate(compose_config("train", tmp_path, tmp_path / "data", ["loss=softtriple", "optimizer=sgd", "data=toy"]))


def test_no_value_error_reaches_a_user():
    with pytest.raises(CtlError, match=r"loss.distance"):
        TripletLoss(distance="manhattan")
    with pytest.raises(CtlError, match=r"loss.centers_per_class"):
        SameClassCentersRegularizer(num_classes=3, centers_per_class=1)
    with pytest.raises(CtlError, match="on_error"):
        RowPolicy(Path("x.tsv"), "ignore")


@pytest.mark.slow
def test_train_with_a_bad_value_stops_at_once_with_one_line(tmp_path):
    result = run_script(
        "train.py", "model.embedding_dim=0", "loss.margin=-1", *TINY, *script_paths(tmp_path, tmp_path / "data"), timeout=120
    )
    assert result.returncode == 2
    line = one_line_error(result.stderr, "train.py")
    assert "model.embedding_dim=0" in line and "loss.margin=-1" in line
    assert not (tmp_path / "data").exists(), "nothing may be generated or built before the config is checked"


# --- decompression bombs -------------------------------------------------------------------------------


def test_a_decompression_bomb_query_image_is_a_one_line_error(tmp_path):
    bomb = bomb_png(tmp_path / "bomb.png")
    with pytest.raises(CtlError, match=re.escape(str(bomb))) as error:
        open_image(bomb)
    assert "decompression bomb" in str(error.value)


def test_prepare_excludes_a_decompression_bomb_and_counts_it(toy, tmp_path, capsys):
    folder = tmp_path / "ctl"
    shutil.copytree(toy, folder, ignore=shutil.ignore_patterns("store"))
    victim = min((folder / "images").glob("*.jpg"))
    bomb_png(victim)
    products_in_victim = sum(line.startswith(victim.stem + "\t") for line in (folder / "raw_train.tsv").read_text().splitlines())
    products_in_victim += sum(line.startswith(victim.stem + "\t") for line in (folder / "raw_test.tsv").read_text().splitlines())
    code, stderr = run_cli(data_main, ["prepare", str(folder), "--size", "16", "--workers", "1"], capsys)
    assert code == 0, stderr
    store = ProductStore.open(folder / "store" / "ctl-16px")
    assert store.manifest["report"]["excluded_products"] == products_in_victim > 0
    assert "image too large" in store.manifest["report"]["bad_images"][str(victim)]


# --- runs: moved, and killed during train and predict ---------------------------------------------


@pytest.mark.slow
def test_a_moved_run_serves_product_and_image_queries_and_evaluates_from_its_checkpoint(tiny_run, data_dir, tmp_path, capsys):
    moved = tmp_path / "elsewhere" / "run"
    shutil.copytree(tiny_run, tmp_path / "copy")
    moved.parent.mkdir()
    os.rename(tmp_path / "copy", moved)
    shutil.rmtree(moved / ".hydra")  # the checkpoint carries its own config
    for kind in KINDS:
        manifest = Catalog.load(moved / "catalogs" / kind).manifest
        paths = [manifest["run_dir"], manifest["model"]["checkpoint"], manifest["data"]["store"], manifest["data"]["root"]]
        assert not any(os.path.isabs(p) for p in paths), paths
    original = Recommender(tiny_run)
    data_root = original.similar.resolve(original.similar.manifest["data"]["root"])  # the data stayed where it was
    query = tmp_path / "query.png"
    Image.fromarray(np.asarray(ProductStore.open(original.store_path()).images[0])).save(query)
    bomb = bomb_png(tmp_path / "bomb.png")
    cases = [
        (["--product", "3"], 0),
        (["--image", str(query)], 0),
        (["--image", str(bomb)], 2),
        (["--product", "3", "--data-root", str(data_root)], 0),
    ]
    for argv, expected in cases:
        code, stderr = run_cli(recommend_main, ["similar", "--catalog", str(moved), *argv, "--out", str(tmp_path / "out")], capsys)
        assert code == expected, stderr
        if expected:
            assert "decompression bomb" in one_line_error(stderr, "ctl-recommend")
        else:  # pictures come from the store, or the fallback is said, never silent
            assert ("--data-root" in stderr) == ("--data-root" not in argv), stderr
    recommender = Recommender(moved)
    checkpoint = moved / Catalog.load(moved / "catalogs" / "similar").manifest["model"]["checkpoint"]
    result = run_script(
        "eval.py",
        f"ckpt_path={checkpoint}",
        *script_paths(tmp_path / "eval", data_dir),
        "trainer.enable_progress_bar=false",
        "recommendation_examples=0",
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "carries no run config" not in result.stdout + result.stderr
    assert len(Catalog.load(tmp_path / "eval" / "run" / "catalogs" / "similar")) == len(recommender)


@pytest.mark.slow
def test_train_killed_while_building_fitting_and_predicting_recovers_each_time(tmp_path):
    data = tmp_path / "data"
    run = tmp_path / "run"
    settings_ = [
        "data=toy",
        *[o for o in TINY if not o.startswith("trainer.max_epochs")],
        "trainer.max_epochs=2",
        "data.num_workers=0",
        *script_paths(tmp_path, data),
    ]
    env = TESTS_ENV
    kill = "+callbacks.kill._target_=fault_injection.KillAt"

    # 1. kill -9 while train.py builds its product store (its decoder workers are up).
    process = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *settings_],
        cwd=REPO,
        env={**ENV, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    stores = data / "synthetic" / "seed0-outfits150-styles16" / "ctl" / "store"
    wait_for(lambda: any(stores.glob(".ctl-32px.tmp-*")) or process.poll() is not None, 240, "the store build")
    workers = children(process.pid)
    process.kill()
    process.wait(timeout=30)
    wait_for(lambda: not any(running(w) for w in workers), 10, "the workers to die with their parent")

    # 2. The next run builds the store (no hang on the lock); kill -9 at the start of its second epoch.
    result = run_script(
        "train.py", *settings_, kill, "+callbacks.kill.hook=train_epoch_start", "+callbacks.kill.epoch=1", env=env, timeout=300
    )
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    assert leftovers(stores) == [] and (run / "checkpoints" / "last.ckpt").is_file()

    # 3. Resume from last.ckpt; kill -9 in the middle of predict.
    resume = f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"
    result = run_script("train.py", *settings_, resume, kill, "+callbacks.kill.hook=predict_batch_end", env=env, timeout=300)
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    assert not (run / "catalogs" / "similar").exists()

    # 4. eval.py writes the catalogs; the killed predict's shards and a killed merge's folder are gone.
    (run / "catalogs" / f".similar.tmp-{dead_pid()}").mkdir(parents=True)
    result = run_script(
        "eval.py",
        f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
        *script_paths(tmp_path, data),
        "trainer.enable_progress_bar=false",
        "recommendation_examples=0",
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(Catalog.load(run / "catalogs" / "compatible")) == len(ProductStore.open(stores / "ctl-32px"))
    assert leftovers(run / "catalogs") == [] and not (run / "catalogs" / ".shards").exists()


# --- predict on several ranks: a rank that died leaves no catalog -------------------------------------


class _Embedder(torch.nn.Module):
    """Stands in for the model at predict: fixed random embeddings by row id."""

    def pair_subspaces(self):
        return None


def _predict_as_rank(writer, rank: int, world_size: int, rows: np.ndarray, finish: bool = True):
    """Run the writer's hooks as rank ``rank`` of ``world_size`` would for its share of ``rows``."""
    trainer = SimpleNamespace(global_rank=rank, world_size=world_size, is_global_zero=rank == 0, ckpt_path=None)
    trainer.strategy = SimpleNamespace(barrier=lambda name: None)
    writer.on_predict_start(trainer, _Embedder())
    mine = rows[rank::world_size]
    for start in range(0, len(mine), 16):
        ids = torch.from_numpy(mine[start : start + 16])
        prediction = {"row_ids": ids, **{kind: torch.randn(len(ids), dim) for kind, dim in (("similar", 12), ("compatible", 4))}}
        writer.write_on_batch_end(trainer, None, prediction, None, None, start, 0)
    if finish:
        writer.on_predict_epoch_end(trainer, _Embedder())
    else:  # killed: its files stay open and unflushed, no completion record
        for handle in writer._files.values():
            handle.close()


def test_a_rank_that_died_mid_predict_leaves_no_catalog_and_a_complete_predict_ignores_stale_ranks(toy, tmp_path):
    store = small_store(toy, tmp_path / "stores")
    datamodule = SimpleNamespace(store=store, predict_rows=store.table.positions, source=SimpleNamespace(root=toy))
    out = tmp_path / "run" / "catalogs"
    (out / ".shards" / "rank2").mkdir(parents=True)  # a stale rank of an older, wider predict
    (out / ".shards" / "rank2" / "done.json").write_text('{"rows": 0, "dims": {}}')

    writer = CatalogWriter(out, datamodule, run_dir=tmp_path / "run")
    _predict_as_rank(writer, 1, 2, datamodule.predict_rows, finish=False)  # rank 1 dies mid-predict
    with pytest.raises(CtlError, match=r"rank1: rank 1 did not finish predict"):
        _predict_as_rank(writer, 0, 2, datamodule.predict_rows)
    assert not (out / "similar").exists() and not (out / "compatible").exists()

    _predict_as_rank(writer, 1, 2, datamodule.predict_rows)
    with (out / ".shards" / "rank1" / "compatible.bin").open("r+b") as handle:  # a shard cut short on disk
        handle.truncate(8)
    with pytest.raises(CtlError, match=r"compatible.bin: rank 1's shard is incomplete \(8 bytes"):
        _predict_as_rank(writer, 0, 2, datamodule.predict_rows)
    assert not (out / "similar").exists() and not (out / "compatible").exists()

    _predict_as_rank(writer, 1, 2, datamodule.predict_rows)
    _predict_as_rank(writer, 0, 2, datamodule.predict_rows)
    for kind in KINDS:
        catalog = Catalog.load(out / kind)
        assert np.array_equal(np.sort(catalog.row_ids), datamodule.predict_rows)
    assert not (out / ".shards").exists()


# --- any bytes to the annotation readers ---------------------------------------------------------

READERS = {
    "ctl-raw": read_ctl_raw,
    "ctl-triplets": read_ctl_triplets,
    "ctl-fitb": read_ctl_fitb,
    "stl-products": read_stl_products,
    "stl-categories": read_stl_categories,
}
FRAGMENTS = [
    b"\t",
    b"\n",
    b"\r\n",
    b" ",
    b"0.5",
    b"0.25",
    b"-1",
    b"1e309",
    b"nan",
    b"abc",
    b"Shoes",
    b"|",
    b"image_signature",
    b"{",
    b"}",
    b"[",
    b"]",
    b'"',
    b":",
    b",",
    b'"bbox"',
    b'"product"',
    b'"scene"',
    b'"question"',
    b'"answers"',
    b'"image_signature"',
    b'"label"',
    b"\xff",
    b"\xef\xbb\xbf",
    b"\x00",
    b"\xc3\xa9",
]
JSON_KEYS = [
    "question",
    "answers",
    "product",
    "scene",
    "bbox",
    "image_signature",
    "bounding_x",
    "bounding_y",
    "bounding_width",
    "bounding_height",
    "label",
]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 2) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(JSON_KEYS) | st.text(max_size=4), inner, max_size=6),
    max_leaves=20,
)
documents = st.one_of(
    st.binary(max_size=400),
    st.lists(st.sampled_from(FRAGMENTS), max_size=80).map(b"".join),
    json_values.map(lambda value: json.dumps(value).encode()),
    st.lists(json_values.map(json.dumps), max_size=5).map(lambda lines: "\n".join(lines).encode()),
)


@pytest.mark.parametrize("kind", READERS)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=documents, on_error=st.sampled_from(["raise", "skip"]))
def test_any_bytes_give_records_or_a_file_line_error(tmp_path, kind, data, on_error):
    path = tmp_path / f"{kind}.txt"
    path.write_bytes(data)
    try:
        result = READERS[kind](path, on_error=on_error)
    except DataFormatError as error:
        assert re.fullmatch(rf"{re.escape(str(path))}(:\d+)?: [^\n]+", str(error)), str(error)
    else:
        assert isinstance(result, ParseResult) and result.records
