"""Scaling out (README "Scaling out"): a sweep of DDP jobs, SLURM through submitit, torchrun, and
Optuna workers sharing one study. Everything runs on the CPU (gloo); the SLURM test stops at sbatch."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import CONF, REPO, TINY, run_script
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from test_training import _assert_catalogs_cover_the_store, _metrics

from ctl_lightning.benchmarks import ddp_sweep as sweep_check
from ctl_lightning.errors import CtlError
from ctl_lightning.launch import run_name, tasks_per_node

BIN = Path(sys.executable).parent


def _environment(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", **extra}


def _paths(root: Path, data: Path) -> list[str]:
    """Data and outputs inside the test's folders; run and sweep directories keep their defaults."""
    return [f"paths.root_dir={root}", f"paths.data_dir={data}"]


def _run_dirs(outputs: Path) -> list[Path]:
    """Every directory a Hydra run or job wrote (each has its .hydra folder)."""
    return sorted(p.parent.relative_to(outputs) for p in outputs.rglob(".hydra"))


@pytest.fixture(scope="module")
def ddp_sweep(data_dir, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The README's `python train.py -m trainer=ddp_cpu loss.margin=0.1,0.2`: 2 jobs x 2 ranks, with
    the default run and sweep directories (only the root moved), so stray directories would show."""
    root = tmp_path_factory.mktemp("ddp_sweep")
    result = run_script("train.py", "-m", "trainer=ddp_cpu", "loss.margin=0.1,0.2", *TINY, *_paths(root, data_dir))
    return root / "outputs", result


@pytest.mark.slow
def test_ddp_sweep_gives_two_jobs_of_two_ranks_each_in_its_own_directory(ddp_sweep):
    outputs, result = ddp_sweep
    assert result.returncode == 0, result.stderr[-3000:]
    assert [p.name for p in outputs.iterdir()] == ["train"] and [p.name for p in (outputs / "train").iterdir()] == ["multiruns"]
    sweeps = list((outputs / "train" / "multiruns").iterdir())
    assert len(sweeps) == 1, "a rank that re-ran the command line would have started a sweep of its own"
    assert _run_dirs(outputs) == [sweeps[0].relative_to(outputs) / job for job in ("0", "1")], "no stray run directories"
    margins = set()
    for job in ("0", "1"):
        job_dir = sweeps[0] / job
        margins.add(yaml.safe_load((job_dir / ".hydra" / "config.yaml").read_text())["loss"]["margin"])
        assert 0.0 <= _metrics(job_dir)["test/triplet_accuracy"] <= 1.0
        _assert_catalogs_cover_the_store(job_dir)
    assert margins == {0.1, 0.2}
    # Each job is one submitit job of 2 tasks, and its second task joined the first as rank 1 of 2.
    rank1_logs = sorted((sweeps[0] / ".submitit").glob("*/*_1_log.err"))
    assert len(rank1_logs) == 2
    assert all("GLOBAL_RANK: 1, MEMBER: 2/2" in log.read_text() for log in rank1_logs)


@pytest.mark.slow
def test_the_gpu_scripts_sweep_checker_reads_the_cpu_sweep_and_rejects_a_stray_run(ddp_sweep, tmp_path):
    """bench/gpu.sh --parts ddp_sweep checks the GPU sweep with ddp_sweep.check: here on the CPU sweep."""
    outputs, result = ddp_sweep
    assert result.returncode == 0, result.stderr[-3000:]
    summary = sweep_check.check(outputs)
    assert [(job["job"], job["margin"]) for job in summary["jobs"]] == [("0", 0.1), ("1", 0.2)]
    assert summary["world_sizes"] == [2, 2]
    rows = {job["catalog_rows"]["similar"] for job in summary["jobs"]} | {job["catalog_rows"]["compatible"] for job in summary["jobs"]}
    assert len(rows) == 1 and rows.pop() > 0
    copy = tmp_path / "outputs"
    shutil.copytree(outputs, copy)
    (copy / "train" / "runs" / "stray" / ".hydra").mkdir(parents=True)
    with pytest.raises(sweep_check.SweepFailed, match="are not the sweep's jobs"):
        sweep_check.check(copy)


def _launcher(*overrides: str) -> dict:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    launcher = cfg.hydra.launcher
    return {key: launcher[key] for key in ("_target_", "nodes", "tasks_per_node", "gpus_per_node") if key in launcher}


def test_ddp_configs_run_each_sweep_job_as_submitit_tasks_one_per_device():
    default = _launcher("trainer=ddp_cpu")
    assert default == _launcher("hydra/launcher=submitit_local", "trainer=ddp_cpu")
    assert default["_target_"].endswith("LocalLauncher") and default["tasks_per_node"] == 2 and default["gpus_per_node"] == 0
    slurm = _launcher("hydra/launcher=slurm", "trainer=ddp", "trainer.num_nodes=2", "trainer.devices=8")
    assert slurm["_target_"].endswith("SlurmLauncher")
    assert (slurm["nodes"], slurm["tasks_per_node"], slurm["gpus_per_node"]) == (2, 8, 8)
    assert _launcher("trainer=cpu")["_target_"].endswith("BasicLauncher")  # single-process sweeps run in-process
    for devices in (0, "0,1"):  # a count per node, not device ids
        with pytest.raises(CtlError, match=f"trainer.devices={devices}: give the number of devices per node"):
            tasks_per_node(devices)


@pytest.mark.slow
def test_slurm_sweep_renders_the_sbatch_script_of_two_node_eight_gpu_jobs(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    # sbatch keeps the script it is given and refuses it, so the sweep stops there; submitit wants srun on PATH.
    (fake / "sbatch").write_text('#!/bin/sh\ncp "$1" "$SBATCH_CAPTURE"\necho "sbatch: error: not submitted (test)" >&2\nexit 1\n')
    (fake / "srun").write_text("#!/bin/sh\nexit 1\n")
    for tool in fake.iterdir():
        tool.chmod(0o755)
    captured = tmp_path / "sbatch.sh"
    result = run_script(
        "train.py",
        "-m",
        "hydra/launcher=slurm",
        "trainer=ddp",
        "trainer.num_nodes=2",
        "trainer.devices=8",
        "loss.margin=0.1,0.2",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.account=fashion",
        "hydra.launcher.qos=high",
        "hydra.launcher.cpus_per_task=6",
        "hydra.launcher.mem_gb=400",
        "hydra.launcher.timeout_min=90",
        f"paths.root_dir={tmp_path}",
        env={"PATH": f"{fake}{os.pathsep}{os.environ['PATH']}", "SBATCH_CAPTURE": str(captured)},
        timeout=300,
    )
    assert result.returncode != 0 and "not submitted (test)" in result.stderr
    script = captured.read_text()
    directives = dict(line[len("#SBATCH --") :].split("=", 1) for line in script.splitlines() if line.startswith("#SBATCH --"))
    assert directives["nodes"] == "2" and directives["ntasks-per-node"] == "8" and directives["gpus-per-node"] == "8"
    assert directives["array"].startswith("0-1")  # one array task per sweep job
    assert (directives["partition"], directives["account"], directives["qos"]) == ("gpu", "fashion", "high")
    assert (directives["cpus-per-task"], directives["mem"], directives["time"]) == ("6", "400GB", "90")
    srun = [line for line in script.splitlines() if line.startswith("srun ")]
    # One srun starts every task of the job (2 nodes x 8); each runs the pickled Hydra job, never train.py's argv.
    assert len(srun) == 1
    assert re.fullmatch(
        rf"srun --unbuffered --output \S+ --error \S+ {re.escape(sys.executable)} -u -m submitit\.core\._submit \S+", srun[0]
    )


@pytest.mark.slow
def test_torchrun_ranks_agree_on_one_run_directory_and_rank_zero_writes_outputs(data_dir, tmp_path):
    result = subprocess.run(
        [str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "train.py", "trainer=ddp_cpu", *TINY, *_paths(tmp_path, data_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env=_environment(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert [p.name for p in (tmp_path / "outputs" / "train").iterdir()] == ["runs"]
    runs = _run_dirs(tmp_path / "outputs")
    assert len(runs) == 1 and runs[0].parent == Path("train/runs") and runs[0].name.startswith("torchrun-")
    run_dir = tmp_path / "outputs" / runs[0]
    assert 0.0 <= _metrics(run_dir)["test/triplet_accuracy"] <= 1.0
    _assert_catalogs_cover_the_store(run_dir)
    assert result.stdout.count("held-out triplet accuracy") == 1, "the metric table comes from rank 0 only"
    assert (result.stdout + result.stderr).count("recommendation picture:") == 1


def test_run_name_is_shared_by_the_ranks_a_launcher_started(monkeypatch):
    for name in ("WORLD_SIZE", "TORCHELASTIC_RUN_ID", "SLURM_NTASKS", "SLURM_STEP_ID", "SLURM_JOB_ID"):
        monkeypatch.delenv(name, raising=False)
    assert run_name()[:2] == "20"  # a plain run: its start time
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "5f1e")
    assert run_name() == "torchrun-5f1e"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    with pytest.raises(CtlError, match="--standalone"):
        run_name()
    # what the error advises works: with the run directory given, no run name is asked for
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["hydra.run.dir=/given/run"], return_hydra_config=True)
    assert cfg.hydra.run.dir == "/given/run"
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    monkeypatch.setenv("SLURM_NTASKS", "16")
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    assert run_name() == "slurm-77.0"


def test_a_run_directory_that_cannot_be_named_is_a_one_line_error(tmp_path):
    """Hydra resolves hydra.run.dir before train.py's own error handling runs; a torchrun without a
    shared run id must still read as one line, not as Hydra's traceback."""
    ranks = _environment(WORLD_SIZE="2", TORCHELASTIC_RUN_ID="none")
    result = subprocess.run(
        [sys.executable, "train.py", f"paths.root_dir={tmp_path}"], cwd=REPO, capture_output=True, text=True, env=ranks, timeout=300
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.splitlines()[-1].startswith("train.py: error: torchrun's ranks share no run id")
    assert not (tmp_path / "outputs").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="trainer.devices=-1 is valid where there are GPUs")
def test_a_sweep_over_gpus_on_a_machine_without_any_is_a_one_line_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "train.py", "-m", "trainer=ddp", "loss.margin=0.1,0.2", f"paths.root_dir={tmp_path}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    expected = "train.py: error: trainer.devices=-1 counts this machine's GPUs and it has none: give trainer.devices=N"
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.splitlines()[-1] == expected
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_parallel_optuna_workers_share_one_study(data_dir, tmp_path):
    import optuna

    storage = f"sqlite:///{tmp_path}/optuna.db"
    created = subprocess.run(
        [
            str(BIN / "optuna"),
            "create-study",
            "--storage",
            storage,
            "--study-name",
            "ctl_lightning",
            "--direction",
            "maximize",
            "--skip-if-exists",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert created.returncode == 0, created.stderr[-2000:]
    common = [
        "hparams_search=optuna",
        f"hydra.sweeper.storage={storage}",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.n_startup_trials=2",
    ]
    workers = [
        subprocess.Popen(
            [sys.executable, "train.py", *common, f"hydra.sweeper.sampler.seed={worker}", *TINY, *_paths(tmp_path, data_dir)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_environment(WANDB_SILENT="true"),
        )
        for worker in (1, 2)
    ]
    for worker in workers:
        _, stderr = worker.communicate(timeout=600)
        assert worker.returncode == 0, stderr[-3000:]
    study = optuna.load_study(study_name="ctl_lightning", storage=storage)
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(study.trials) == 4 and len(finished) == 4
    assert len({tuple(sorted(t.params.items())) for t in finished}) == 4
    sweeps = list((tmp_path / "outputs" / "train" / "multiruns").iterdir())
    assert len(sweeps) == 2, "each worker has its own sweep directory"
    reported = []
    for sweep in sweeps:
        assert sorted(p.name for p in sweep.iterdir() if (p / "metrics.json").is_file()) == ["0", "1"]
        reported.append(yaml.safe_load((sweep / "optimization_results.yaml").read_text())["best_value"])
    # Each worker reports the shared study's best as of its own end: one of the study's trials, and for
    # the worker that ends last, the best of all four (the one ending first may not have seen it yet).
    values = [t.value for t in finished]
    assert all(any(value == pytest.approx(seen) for seen in values) for value in reported), (reported, values)
    assert max(reported) == pytest.approx(study.best_value)


def test_in_a_slurm_job_lightning_joins_slurms_tasks_and_starts_none(monkeypatch):
    """What each task of the 2-node x 8-device job above sees: Lightning's SLURMEnvironment, whose
    ranks come from SLURM, so DDP's launcher starts no process of its own."""
    from hydra.utils import instantiate
    from lightning_fabric.plugins.environments import SLURMEnvironment

    task = {"SLURM_NTASKS": "16", "SLURM_NTASKS_PER_NODE": "8", "SLURM_NNODES": "2", "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": "77"}
    task |= {"SLURM_PROCID": "11", "SLURM_LOCALID": "3", "SLURM_NODEID": "1", "SLURM_NODELIST": "gpu[01-02]"}
    for name, value in task.items():
        monkeypatch.setenv(name, value)
    # The trainer below sets the process-wide rank of rank_zero_only to 11; put it back afterwards, or
    # every later test in this process would log nothing (loggers write on rank 0 only).
    from lightning_fabric.utilities import rank_zero as fabric_rank_zero
    from lightning_utilities.core import rank_zero as utilities_rank_zero
    from pytorch_lightning.utilities import rank_zero

    for decorator in (rank_zero.rank_zero_only, fabric_rank_zero.rank_zero_only, utilities_rank_zero.rank_zero_only):
        monkeypatch.setattr(decorator, "rank", decorator.rank)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["trainer=ddp_cpu", "trainer.devices=8", "trainer.num_nodes=2"])
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False, default_root_dir="unused")
    environment = trainer.strategy.cluster_environment
    assert isinstance(environment, SLURMEnvironment) and environment.creates_processes_externally
    assert (trainer.global_rank, trainer.local_rank, trainer.node_rank, trainer.world_size) == (11, 3, 1, 16)
