"""Tests of the training job: the rank program, the job wrapper and the manifest.

The job tests start real 2-rank torch.distributed jobs (gloo on 127.0.0.1) through
run_training.py and compare the manifest with the checkpoint files on disk. Each mode
runs once per module. Two more dcp jobs kill a rank mid-save and then recover, beside
the checkpoints of another run id that neither job may touch. The whole
file took 95 s on a 2-core VM without a GPU, and 177 s while other test runs shared
its cores.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.distributed as dist

import run_training
import train_checkpoint
from run_training import TrainingJobError

REPOSITORY = Path(__file__).resolve().parent.parent
RUN_TRAINING = REPOSITORY / "workflow" / "scripts" / "run_training.py"
DARSHAN_LIBRARY = Path("/tmp/darshan-install/lib/libdarshan.so")
JOB_TIMEOUT_S = 300
STEPS = 3

# Variables of an enclosing torchrun or Slurm job that would change how the test jobs launch.
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def job_settings(mode: str, checkpoint_dir: Path, darshan: dict | None = None, device: str = "cpu",
                 run_id: str = "test", keep: str = "all") -> dict:
    """Return settings of the Snakefile's shape, with a ViT shrunk so that start-up dominates the job."""
    return {
        "run_id": run_id,
        "mode": mode,
        "model": {"name": "small_vit", "pretrained": False,
                  "small_vit": {"patch_size": 16, "num_layers": 2, "num_heads": 2, "hidden_dim": 64, "mlp_dim": 128}},
        "training": {"steps": STEPS, "checkpoint_interval": 1, "batch_size": 4, "image_size": 32,
                     "num_classes": 10, "learning_rate": 0.001, "seed": 0},
        "launch": {"nodes": 1, "ranks_per_node": 2, "device": device, "launcher": "torchrun"},
        "checkpoint": {"dir": str(checkpoint_dir), "fsync": True, "keep": keep},
        "darshan": darshan,
    }


def job_environment() -> dict[str, str]:
    """Return this process's environment without the variables of an enclosing job."""
    return {name: value for name, value in os.environ.items()
            if name not in LAUNCH_VARIABLES and not name.startswith("SLURM_")}


@dataclass
class JobRun:
    """One finished run of run_training.py."""

    output_dir: Path
    checkpoint_dir: Path
    completed: subprocess.CompletedProcess
    manifest: dict | None


def start_job(settings: dict, output_dir: Path) -> subprocess.Popen:
    """Start run_training.py with these settings, its output captured."""
    command = [sys.executable, str(RUN_TRAINING), "--mode", settings["mode"], "--settings", json.dumps(settings),
               "--output-dir", str(output_dir)]
    return subprocess.Popen(command, env=job_environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_job(process: subprocess.Popen, output_dir: Path, checkpoint_dir: Path) -> JobRun:
    """Wait for a started run_training.py and return its outcome."""
    try:
        stdout, stderr = process.communicate(timeout=JOB_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
    completed = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    manifest_path = output_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
    return JobRun(output_dir, checkpoint_dir, completed, manifest)


def run_job(mode: str, root: Path, darshan: dict | None = None, device: str = "cpu") -> JobRun:
    """Run run_training.py for one mode under ``root`` and return its outcome.

    An earlier checkpoint (``step_99``) and an unrelated file (``keep.txt``) are put
    into the checkpoint directory first, to check what the wrapper removes.
    """
    output_dir = root / "results" / mode / "train"
    checkpoint_dir = root / "checkpoints" / mode
    seed_checkpoint_dir(checkpoint_dir)
    settings = job_settings(mode, checkpoint_dir, darshan, device)
    return finish_job(start_job(settings, output_dir), output_dir, checkpoint_dir)


def seed_checkpoint_dir(checkpoint_dir: Path) -> None:
    """Put an earlier run's checkpoint (step_99) and an unrelated file (keep.txt) into a checkpoint directory."""
    (checkpoint_dir / "step_99").mkdir(parents=True)
    (checkpoint_dir / "step_99" / "__0_0.distcp").write_bytes(b"earlier run")
    (checkpoint_dir / "keep.txt").write_text("not a checkpoint")


def succeeded(run: JobRun) -> dict:
    """Return the manifest of a run that must have succeeded, else fail with its output."""
    assert run.completed.returncode == 0, f"run_training.py failed:\n{run.completed.stderr[-6000:]}"
    assert run.manifest is not None, "run_training.py exited 0 but wrote no manifest.json"
    return run.manifest


def filesystem_type(path: Path) -> str:
    """Return the type of the file system that contains ``path``, from /proc/mounts ("" where unknown)."""
    best, kind = "", ""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return ""
    for line in mounts:
        fields = line.split()
        if len(fields) > 2 and str(path.resolve()).startswith(fields[1]) and len(fields[1]) > len(best):
            best, kind = fields[1], fields[2]
    return kind


DARSHAN_SETTINGS = {"runtime": {"library": str(DARSHAN_LIBRARY), "version": "3.5.0",
                                 "log_path_by_env": ["DARSHAN_LOG_DIR_PATH"], "default_log_path": None,
                                 "jobid_env": "SLURM_JOB_ID"},
                    "max_records": 50000, "modules": ["POSIX", "STDIO"], "dxt": False}


def darshan_for(mode: str) -> dict | None:
    """Return the Darshan settings of a mode's module job: dcp_async_process is traced when a runtime exists.

    Its background writers are the processes whose logs are easiest to lose, and one
    traced job serves both the manifest tests and the Darshan tests.
    """
    return DARSHAN_SETTINGS if mode == "dcp_async_process" and DARSHAN_LIBRARY.is_file() else None


@pytest.fixture(scope="module")
def training_job(tmp_path_factory):
    """Run each mode's job at most once per module and return the run."""
    runs: dict[str, JobRun] = {}

    def run(mode: str) -> JobRun:
        if mode not in runs:
            runs[mode] = run_job(mode, tmp_path_factory.mktemp(mode), darshan=darshan_for(mode))
        return runs[mode]

    return run


@pytest.fixture(scope="module")
def single_rank_group():
    """Join a 1-rank gloo process group on 127.0.0.1 in this process, for Checkpointer tests."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GLOO_SOCKET_IFNAME", "lo")
        # The background writer of process-based async_save rendezvouses at MASTER_ADDR.
        patch.setenv("MASTER_ADDR", "127.0.0.1")
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
        yield
        dist.destroy_process_group()


# ---- rank environment --------------------------------------------------------

TORCHRUN_ENV = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
SLURM_ENV = {"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1",
             "MASTER_ADDR": "nid001", "MASTER_PORT": "21234"}


def test_rank_environment_from_torchrun():
    env = train_checkpoint.rank_environment(TORCHRUN_ENV)

    assert env == train_checkpoint.RankEnvironment(rank=1, world_size=2, local_rank=1, master_addr="127.0.0.1",
                                                   master_port=29500, source="torchrun")


def test_rank_environment_from_slurm():
    env = train_checkpoint.rank_environment(SLURM_ENV)

    assert env == train_checkpoint.RankEnvironment(rank=3, world_size=4, local_rank=1, master_addr="nid001",
                                                   master_port=21234, source="slurm")


def test_rank_environment_prefers_torchrun():
    env = train_checkpoint.rank_environment({**SLURM_ENV, **TORCHRUN_ENV})

    assert env.source == "torchrun"
    assert env.rank == 1


@pytest.mark.parametrize("environ, message", [
    ({}, "neither torchrun"),
    ({**TORCHRUN_ENV, "MASTER_ADDR": ""}, "MASTER_ADDR is not set"),
    ({key: value for key, value in SLURM_ENV.items() if key != "MASTER_PORT"}, "MASTER_PORT is not set"),
    ({**TORCHRUN_ENV, "LOCAL_RANK": "one"}, "LOCAL_RANK='one' is not an integer"),
    ({**TORCHRUN_ENV, "RANK": "2"}, "rank 2 is outside world size 2"),
])
def test_rank_environment_rejects_incomplete(environ, message):
    with pytest.raises(RuntimeError, match=message):
        train_checkpoint.rank_environment(environ)


# ---- launch command and environment ------------------------------------------

def test_torchrun_command():
    arguments = ["--mode", "dcp"]

    command = run_training.build_launch_command("torchrun", 1, 2, arguments, python="/venv/bin/python",
                                                script=Path("/w/train_checkpoint.py"))

    assert command == ["/venv/bin/python", "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
                       "--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:0", "--local-addr", "127.0.0.1",
                       "--max-restarts", "0", "/w/train_checkpoint.py", "--mode", "dcp"]


def test_torchrun_rejects_multiple_nodes():
    with pytest.raises(TrainingJobError, match="launch.nodes is 2 .* set launch.launcher to srun"):
        run_training.build_launch_command("torchrun", 2, 4, [])


def test_srun_command():
    command = run_training.build_launch_command("srun", 2, 4, ["--mode", "dcp"], python="/venv/bin/python",
                                                script=Path("/w/train_checkpoint.py"))

    assert command == ["srun", "--ntasks", "8", "--ntasks-per-node", "4", "--nodes", "2", "--kill-on-bad-exit=1",
                       "--overlap", "/venv/bin/python", "/w/train_checkpoint.py", "--mode", "dcp"]


def test_training_arguments():
    arguments = run_training.training_arguments("dcp_async", Path("/o/job_settings.json"), Path("/o"))

    assert arguments == ["--mode", "dcp_async", "--settings-file", "/o/job_settings.json", "--output-dir", "/o"]


@pytest.fixture
def path_with_srun(tmp_path) -> str:
    """Return a PATH whose only directory contains an executable named srun."""
    srun = tmp_path / "bin" / "srun"
    srun.parent.mkdir()
    srun.write_text("#!/bin/sh\nexit 0\n")
    srun.chmod(0o755)
    return str(srun.parent)


def test_choose_launcher_auto(path_with_srun, tmp_path):
    empty_path = str(tmp_path)

    assert run_training.choose_launcher("auto", {"SLURM_JOB_ID": "42", "PATH": path_with_srun}) == "srun"
    assert run_training.choose_launcher("auto", {"PATH": path_with_srun}) == "torchrun"
    assert run_training.choose_launcher("auto", {"SLURM_JOB_ID": "42", "PATH": empty_path}) == "torchrun"
    assert run_training.choose_launcher("torchrun", {"SLURM_JOB_ID": "42", "PATH": path_with_srun}) == "torchrun"


def test_choose_launcher_srun_missing(tmp_path):
    with pytest.raises(TrainingJobError, match="srun is not on PATH"):
        run_training.choose_launcher("srun", {"SLURM_JOB_ID": "42", "PATH": str(tmp_path)})


def test_slurm_master_port_in_range():
    ports = {run_training.slurm_master_port("123456", Path(f"/results/{mode}/train")) for mode in train_checkpoint.MODES}

    assert len(ports) == len(train_checkpoint.MODES), "the modes of one Slurm job must get different ports"
    for port in ports:
        assert 20000 <= port < 32768
    assert run_training.slurm_master_port("123456", Path("/r")) == run_training.slurm_master_port("123456", Path("/r"))


def test_srun_variables_without_nodelist(tmp_path):
    environ = {"SLURM_JOB_ID": "77", "SLURMD_NODENAME": "nid000123", "PATH": str(tmp_path)}

    variables = run_training.launch_variables("srun", environ, tmp_path)

    assert variables == {"MASTER_ADDR": "nid000123", "MASTER_PORT": str(run_training.slurm_master_port("77", tmp_path))}


def test_srun_variables_need_job_id(tmp_path):
    with pytest.raises(TrainingJobError, match="SLURM_JOB_ID is not set"):
        run_training.launch_variables("srun", {}, tmp_path)


def test_torchrun_variables_bind_gloo_to_loopback(tmp_path):
    assert run_training.launch_variables("torchrun", {}, tmp_path) == {"GLOO_SOCKET_IFNAME": "lo"}
    assert run_training.launch_variables("torchrun", {"GLOO_SOCKET_IFNAME": "eth0"}, tmp_path) == {}


def test_child_environment_prepends_darshan():
    environ = {"LD_PRELOAD": "/opt/other.so", "HOME": "/home/user"}
    before = dict(os.environ)

    env = run_training.child_environment(environ, {"GLOO_SOCKET_IFNAME": "lo"},
                                         {"LD_PRELOAD": "/d/libdarshan.so", "DARSHAN_ENABLE_NONMPI": "1"})

    assert env["LD_PRELOAD"] == "/d/libdarshan.so:/opt/other.so"
    assert env["DARSHAN_ENABLE_NONMPI"] == "1"
    assert env["GLOO_SOCKET_IFNAME"] == "lo"
    assert env["HOME"] == "/home/user"
    assert environ == {"LD_PRELOAD": "/opt/other.so", "HOME": "/home/user"}
    assert dict(os.environ) == before


def test_child_environment_sets_darshan_preload():
    env = run_training.child_environment({}, {}, {"LD_PRELOAD": "/d/libdarshan.so"})

    assert env["LD_PRELOAD"] == "/d/libdarshan.so"


# ---- settings and directories ------------------------------------------------

def test_load_settings_from_json_and_file(tmp_path):
    settings = job_settings("dcp", tmp_path / "checkpoints")
    settings_file = tmp_path / "settings.json"
    settings_file.write_text(json.dumps(settings))

    assert run_training.load_settings(json.dumps(settings)) == settings
    assert run_training.load_settings(f"@{settings_file}") == settings


@pytest.mark.parametrize("value, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "must be a JSON object"),
    ("@/nonexistent/settings.json", "cannot read the settings file"),
])
def test_load_settings_rejects_invalid(value, message):
    with pytest.raises(TrainingJobError, match=message):
        run_training.load_settings(value)


def test_check_settings_rejects_mode_mismatch(tmp_path):
    settings = job_settings("dcp", tmp_path)

    with pytest.raises(TrainingJobError, match="--mode is torch_save but settings.mode is dcp"):
        run_training.check_settings(settings, "torch_save")


def test_check_settings_rejects_relative_checkpoint_dir():
    settings = job_settings("dcp", Path("checkpoints/dcp"))

    with pytest.raises(TrainingJobError, match="must be an absolute path"):
        run_training.check_settings(settings, "dcp")


def test_clear_checkpoints_removes_only_steps(tmp_path):
    checkpoint_dir = tmp_path / "dcp"
    (checkpoint_dir / "step_1").mkdir(parents=True)
    (checkpoint_dir / "step_1" / ".metadata").write_bytes(b"x")
    (checkpoint_dir / "step_2.pt").write_bytes(b"x")
    (checkpoint_dir / "keep.txt").write_text("x")
    (checkpoint_dir / "notes").mkdir()

    removed = run_training.clear_checkpoints(checkpoint_dir)

    assert removed == ["step_1", "step_2.pt"]
    assert sorted(path.name for path in checkpoint_dir.iterdir()) == ["keep.txt", "notes"]


def test_clear_checkpoints_creates_directory(tmp_path):
    checkpoint_dir = tmp_path / "new" / "dcp"

    assert run_training.clear_checkpoints(checkpoint_dir) == []
    assert checkpoint_dir.is_dir()


def test_prepare_darshan_rejects_missing_library(tmp_path):
    darshan = {"runtime": {"library": str(tmp_path / "libdarshan.so")}, "max_records": 10, "modules": ["POSIX"],
               "dxt": False}

    with pytest.raises(TrainingJobError, match="libdarshan.so does not exist"):
        run_training.prepare_darshan(darshan, tmp_path / "out")


def test_prepare_darshan_writes_config(tmp_path):
    library = tmp_path / "lib" / "libdarshan.so"
    library.parent.mkdir()
    library.write_bytes(b"")
    output_dir = tmp_path / "out"
    (output_dir / "darshan-logs" / "2026" / "1" / "2").mkdir(parents=True)
    stale_log = output_dir / "darshan-logs" / "2026" / "1" / "2" / "old.darshan"
    stale_log.write_bytes(b"")
    darshan = {"runtime": {"library": str(library), "version": "3.5.0", "log_path_by_env": ["DARSHAN_LOG_DIR_PATH"],
                           "default_log_path": None, "jobid_env": "SLURM_JOB_ID"},
               "max_records": 50000, "modules": ["POSIX", "STDIO"], "dxt": True}

    variables, entry = run_training.prepare_darshan(darshan, output_dir)

    log_dir = str((output_dir / "darshan-logs").resolve())
    assert variables["LD_PRELOAD"] == str(library)
    assert variables["DARSHAN_LOG_DIR_PATH"] == log_dir
    assert variables["DXT_ENABLE_IO_TRACE"] == "1"
    assert "MAX_RECORDS 50000 POSIX,STDIO" in (output_dir / "darshan.conf").read_text()
    assert entry["log_dir"] == log_dir
    assert entry["runtime"]["version"] == "3.5.0"
    assert entry["environment"] == variables
    assert not stale_log.exists()


def test_prepare_darshan_off(tmp_path):
    assert run_training.prepare_darshan(None, tmp_path) == ({}, None)
    assert not (tmp_path / "darshan-logs").exists()


def test_merge_checkpoints_rejects_different_steps():
    records = {0: {"checkpoints": [{"step": 1}, {"step": 2}]}, 1: {"checkpoints": [{"step": 1}]}}

    with pytest.raises(TrainingJobError, match=r"rank 1 saved checkpoints at steps \[1\] but rank 0"):
        run_training.merge_checkpoints(records)


# ---- checkpoint files --------------------------------------------------------

@pytest.mark.parametrize("name, rank", [
    ("__0_0.distcp", 0),
    ("__1_0.distcp", 1),
    ("__12_3.distcp", 12),
    (".metadata", 0),
    (".metadata.tmp", 0),
    ("__3.metadata", 3),
    ("step_2.pt", 0),
    ("notes.txt", None),
])
def test_owning_rank(name, rank):
    assert train_checkpoint.owning_rank(name) == rank


def test_list_checkpoint_files(tmp_path):
    (tmp_path / "step_1").mkdir()
    (tmp_path / "step_1" / "__1_0.distcp").write_bytes(b"12345")
    (tmp_path / "step_1" / ".metadata").write_bytes(b"12")
    (tmp_path / "step_2.pt").write_bytes(b"1234")

    assert train_checkpoint.list_checkpoint_files(tmp_path, "step_1") == [
        {"path": "step_1/.metadata", "bytes": 2, "rank": 0},
        {"path": "step_1/__1_0.distcp", "bytes": 5, "rank": 1},
    ]
    assert train_checkpoint.list_checkpoint_files(tmp_path, "step_2.pt") == [{"path": "step_2.pt", "bytes": 4, "rank": 0}]
    assert train_checkpoint.rank_bytes(tmp_path, "step_1", 1) == 5


def test_checkpoint_steps():
    assert train_checkpoint.checkpoint_steps(3, 1) == [1, 2, 3]
    assert train_checkpoint.checkpoint_steps(7, 3) == [3, 6]
    with pytest.raises(ValueError, match="must be at least 1"):
        train_checkpoint.checkpoint_steps(3, 0)


def test_format_bytes():
    assert train_checkpoint.format_bytes(512) == "512 B"
    assert train_checkpoint.format_bytes(43_500_000) == "43.5 MB"
    assert train_checkpoint.format_bytes(2_000_000_000_000) == "2000.0 GB"


def test_select_device_cpu():
    assert train_checkpoint.select_device("cpu", 3) == torch.device("cpu")
    with pytest.raises(ValueError, match="launch.device is 'gpu'"):
        train_checkpoint.select_device("gpu", 0)


TINY_TRAINING = {"image_size": 32, "num_classes": 10, "batch_size": 2}
TINY_MODEL = {"name": "small_vit", "pretrained": False,
              "small_vit": {"patch_size": 16, "num_layers": 1, "num_heads": 2, "hidden_dim": 32, "mlp_dim": 64}}


def tiny_training(mode: str) -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.Generator]:
    """Build a one-layer ViT wrapped for ``mode`` in this process's 1-rank group and train it one step."""
    model = train_checkpoint.wrap_model(train_checkpoint.build_model(TINY_MODEL, TINY_TRAINING), mode,
                                        torch.device("cpu"), 1)
    optimizer = torch.optim.Adam(model.parameters())
    generator = torch.Generator().manual_seed(0)
    train_one_step(model, optimizer, generator)
    return model, optimizer, generator


def train_one_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator) -> None:
    """Run one training step, which changes every parameter and Adam moment in place."""
    batch = train_checkpoint.random_batch(TINY_TRAINING, torch.device("cpu"), generator)
    train_checkpoint.train_step(model, optimizer, *batch)


@pytest.mark.parametrize("mode", train_checkpoint.MODES)
def test_save_failure_names_mode_rank_path(mode, single_rank_group, tmp_path):
    model, optimizer, _ = tiny_training(mode)
    # A regular file where the checkpoint directory should be makes every save fail.
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    checkpointer = train_checkpoint.Checkpointer(mode, blocker / "checkpoints", True, 0)
    expected_path = blocker / "checkpoints" / train_checkpoint.checkpoint_name(mode, 1)

    try:
        with pytest.raises(train_checkpoint.CheckpointSaveError) as failure:
            checkpointer.save(1, model, optimizer)
            checkpointer.finish()
    finally:
        checkpointer.pending = None
        checkpointer.close()

    message = str(failure.value)
    assert message.startswith(f"{mode} checkpoint save failed on rank 0 for {expected_path}:")
    assert "NotADirectoryError" in message


# ---- integrity ---------------------------------------------------------------------

def test_compare_states_equal():
    expected = {"model/w": torch.arange(6.0).reshape(2, 3), "optimizer/state/0/step": torch.tensor(3.0)}
    actual = {name: tensor.clone() for name, tensor in expected.items()}

    assert train_checkpoint.compare_states(expected, actual) == []


def test_compare_states_modified_tensor():
    saved = {"model/w": torch.arange(6.0), "model/b": torch.zeros(2), "optimizer/state/0/exp_avg": torch.ones(6)}
    expected = train_checkpoint.snapshot_state(saved)
    saved["model/w"][4] += 1.0  # the training loop changes a tensor after its save was requested
    saved["optimizer/state/0/exp_avg"].mul_(0.5)

    differing = train_checkpoint.compare_states(expected, saved)

    assert differing == ["model/w", "optimizer/state/0/exp_avg"]


@pytest.mark.parametrize("actual, reason", [
    ({"w": torch.arange(4.0).to(torch.float64)}, "dtype"),
    ({"w": torch.arange(4.0).reshape(2, 2)}, "shape"),
    ({}, "missing"),
    ({"w": torch.arange(4.0), "extra": torch.zeros(1)}, "extra"),
])
def test_compare_states_structure_changes(actual, reason):
    expected = {"w": torch.arange(4.0)}

    assert train_checkpoint.compare_states(expected, actual) != [], reason


def test_compare_states_nan_equals_same_nan():
    expected = {"w": torch.tensor([float("nan"), 1.0])}

    assert train_checkpoint.compare_states(expected, {"w": expected["w"].clone()}) == []
    assert train_checkpoint.compare_states(expected, {"w": torch.tensor([0.0, 1.0])}) == ["w"]


def test_flatten_tensors_names_paths():
    state = {"model": {"w": torch.zeros(1)}, "optimizer": {"state": {0: {"exp_avg": torch.zeros(1)}},
                                                            "param_groups": [{"lr": 0.1, "params": [0]}]}}

    assert sorted(train_checkpoint.flatten_tensors(state)) == ["model/w", "optimizer/state/0/exp_avg"]


def test_integrity_text():
    names = [f"model/t{index}" for index in range(7)]

    assert run_training.integrity_text([]) == "ok"
    assert run_training.integrity_text(names[:2]) == "mismatch (2 tensors differ: model/t0, model/t1)"
    assert run_training.integrity_text(names) == ("mismatch (7 tensors differ: model/t0, model/t1, model/t2, "
                                                  "model/t3, model/t4, ...)")


def test_async_save_integrity_during_training(single_rank_group, tmp_path):
    model, optimizer, generator = tiny_training("dcp_async")
    checkpointer = train_checkpoint.Checkpointer("dcp_async", tmp_path, True, 0, verify_step=1)
    checkpointer.save(1, model, optimizer)
    train_one_step(model, optimizer, generator)  # while the save may still be writing
    checkpointer.close()

    restore = checkpointer.restore_last(model, optimizer)

    assert restore["integrity"]["checked"] is True
    assert restore["integrity"]["tensors_checked"] > 0
    assert restore["integrity"]["differing"] == []


def test_restore_detects_mismatch(single_rank_group, tmp_path):
    model, optimizer, _ = tiny_training("dcp")
    checkpointer = train_checkpoint.Checkpointer("dcp", tmp_path, True, 0, verify_step=1)
    checkpointer.save(1, model, optimizer)
    name = next(name for name in checkpointer.expected_state if name.startswith("model/"))
    checkpointer.expected_state[name] = checkpointer.expected_state[name] + 1.0

    restore = checkpointer.restore_last(model, optimizer)

    assert restore["integrity"]["differing"] == [name]


# ---- page cache --------------------------------------------------------------------

@pytest.mark.skipif(filesystem_type(Path("/tmp")) == "tmpfs", reason="tmpfs keeps files only in the page cache")
def test_drop_page_cache_evicts_synced_file(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(os.urandom(1 << 20))

    result = train_checkpoint.drop_page_cache([path], fsync=True)

    assert result["fsync_first"] is True
    assert result["resident_bytes_before"] > 0
    assert result["resident_bytes_after"] == 0
    assert result["dropped"] is True


def test_drop_page_cache_reports_missing_file(tmp_path):
    result = train_checkpoint.drop_page_cache([tmp_path / "missing"], fsync=False)

    assert result["dropped"] is False
    assert "missing" in result["errors"][0]


# ---- failed jobs and retention ---------------------------------------------------------

def test_incomplete_dcp_without_metadata(tmp_path):
    for step in (1, 2):
        (tmp_path / f"step_{step}").mkdir()
        (tmp_path / f"step_{step}" / "__0_0.distcp").write_bytes(b"x")
    (tmp_path / "step_1" / ".metadata").write_bytes(b"x")

    incomplete = run_training.find_incomplete_checkpoints("dcp", tmp_path, {})

    assert [item["path"] for item in incomplete] == ["step_2"]
    assert "no .metadata" in incomplete[0]["reason"]


def test_incomplete_torch_save_unfinished_step(tmp_path):
    for step in (1, 2):
        (tmp_path / f"step_{step}.pt").write_bytes(b"x")
    progress = {0: {"phase": "saving", "step": 2, "last_complete_step": 1}}

    incomplete = run_training.find_incomplete_checkpoints("torch_save", tmp_path, progress)

    assert [item["path"] for item in incomplete] == ["step_2.pt"]


def test_incomplete_marker_removed_next_run(tmp_path):
    (tmp_path / "step_2").mkdir()
    incomplete = [{"path": "step_2", "step": 2, "reason": "no .metadata"}]

    run_training.mark_incomplete(tmp_path, incomplete, "dcp", "r1")
    marker = json.loads((tmp_path / "step_2.incomplete").read_text())
    removed = run_training.clear_checkpoints(tmp_path)

    assert marker["complete"] is False
    assert marker["run_id"] == "r1"
    assert removed == ["step_2", "step_2.incomplete"]


def test_describe_rank_killed_while_saving():
    progress = {"phase": "saving", "pid": 42, "step": 2, "checkpoint": "/c/step_2"}

    text = run_training.describe_rank("dcp", 1, progress)

    assert text.startswith("rank 1 (PID 42) stopped while saving dcp checkpoint step 2 at /c/step_2")
    assert "killed" in text
    assert run_training.describe_rank("dcp", 0, {"phase": "finished"}) is None


def retention_checkpoints() -> list[dict]:
    return [{"path": f"step_{step}"} for step in (1, 2, 3)]


@pytest.mark.parametrize("keep, left", [("all", ["step_1", "step_2", "step_3"]), ("last", ["step_3"]), ("none", [])])
def test_apply_retention(keep, left, tmp_path):
    for step in (1, 2, 3):
        (tmp_path / f"step_{step}").mkdir()
    (tmp_path / "keep.txt").write_text("x")
    checkpoints = retention_checkpoints()

    result = run_training.apply_retention(tmp_path, checkpoints, keep)

    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([*left, "keep.txt"])
    assert result["kept"] == left
    assert [c["retained"] for c in checkpoints] == [c["path"] in left for c in checkpoints]


def test_retention_rejects_outside_path(tmp_path):
    (tmp_path / "other").mkdir()

    with pytest.raises(TrainingJobError, match="cannot delete .*other: checkpoint.keep deletes only step_<k>"):
        run_training.apply_retention(tmp_path / "run", [{"path": "../other"}, {"path": "step_2"}], "last")
    assert (tmp_path / "other").is_dir()


def test_check_settings_rejects_unknown_keep(tmp_path):
    settings = job_settings("dcp", tmp_path, keep="some")

    with pytest.raises(TrainingJobError, match="checkpoint.keep is 'some'; use one of all, last, none"):
        run_training.check_settings(settings, "dcp")


# ---- training jobs -----------------------------------------------------------

def files_on_disk(checkpoint_dir: Path, relative_path: str) -> dict[str, int]:
    """Return {path relative to checkpoint_dir: bytes} of one checkpoint, by walking the disk."""
    root = checkpoint_dir / relative_path
    if root.is_file():
        return {relative_path: root.stat().st_size}
    sizes = {}
    for directory, _, names in os.walk(root):
        for name in names:
            path = Path(directory) / name
            sizes[path.relative_to(checkpoint_dir).as_posix()] = path.stat().st_size
    return sizes


@pytest.mark.slow
@pytest.mark.parametrize("mode", train_checkpoint.MODES)
def test_job_manifest_header(mode, training_job):
    run = training_job(mode)
    manifest = succeeded(run)

    assert manifest["manifest_version"] == 1
    assert manifest["mode"] == mode
    assert manifest["run_id"] == "test"
    assert manifest["launcher"] == "torchrun"
    assert manifest["world_size"] == 2
    assert manifest["nodes"] == 1
    assert manifest["device"] == "cpu"
    assert manifest["backend"] == "gloo"
    assert manifest["checkpoint_dir"] == str(run.checkpoint_dir)
    assert (manifest["darshan"] is None) == (darshan_for(mode) is None)
    assert manifest["settings"] == job_settings(mode, run.checkpoint_dir, darshan_for(mode))
    assert manifest["versions"]["torch"] == torch.__version__
    assert manifest["start_utc"] < manifest["end_utc"]
    assert manifest["start_utc"].endswith("Z")


@pytest.mark.slow
@pytest.mark.parametrize("mode", train_checkpoint.MODES)
def test_job_manifest_matches_disk(mode, training_job):
    run = training_job(mode)
    manifest = succeeded(run)

    assert [checkpoint["step"] for checkpoint in manifest["checkpoints"]] == list(range(1, STEPS + 1))
    for checkpoint in manifest["checkpoints"]:
        listed = {item["path"]: item["bytes"] for item in checkpoint["file_list"]}
        assert checkpoint["path"] == train_checkpoint.checkpoint_name(mode, checkpoint["step"])
        assert listed == files_on_disk(run.checkpoint_dir, checkpoint["path"])
        assert checkpoint["bytes"] == sum(listed.values())
        assert checkpoint["files"] == len(listed)
        assert sum(checkpoint["bytes_by_rank"].values()) == checkpoint["bytes"]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["dcp", "dcp_async", "dcp_async_process"])
def test_job_dcp_files_per_rank(mode, training_job):
    manifest = succeeded(training_job(mode))

    for checkpoint in manifest["checkpoints"]:
        owners = {item["path"]: item["rank"] for item in checkpoint["file_list"]}
        step_dir = checkpoint["path"]
        assert owners == {f"{step_dir}/.metadata": 0, f"{step_dir}/__0_0.distcp": 0, f"{step_dir}/__1_0.distcp": 1}
        assert set(checkpoint["bytes_by_rank"]) == {"0", "1"}
        assert checkpoint["bytes_by_rank"]["1"] > 0


@pytest.mark.slow
def test_job_torch_save_one_file_per_step(training_job):
    run = training_job("torch_save")
    manifest = succeeded(run)

    for checkpoint in manifest["checkpoints"]:
        assert checkpoint["file_list"] == [{"path": f"step_{checkpoint['step']}.pt", "bytes": checkpoint["bytes"], "rank": 0}]
        assert checkpoint["bytes_by_rank"] == {"0": checkpoint["bytes"]}
    state = torch.load(run.checkpoint_dir / "step_3.pt", map_location="cpu")
    assert set(state) == {"model", "optimizer"}
    assert "encoder.layers.encoder_layer_0.self_attention.in_proj_weight" in state["model"]
    assert state["optimizer"]["state"], "optimizer state is empty, so the checkpoint lacks Adam moments"


@pytest.mark.slow
@pytest.mark.parametrize("mode", train_checkpoint.MODES)
def test_job_processes(mode, training_job):
    manifest = succeeded(training_job(mode))
    processes = manifest["processes"]

    launchers = [process for process in processes if process["role"] == "launcher"]
    ranks = {process["rank"]: process for process in processes if process["role"] == "rank"}
    assert len(launchers) == 1
    assert launchers[0]["rank"] is None
    assert sorted(ranks) == [0, 1]
    for process in ranks.values():
        assert process["ppid"] == launchers[0]["pid"], "torchrun starts the ranks as its children"
        assert process["host"] == manifest["host"]
    assert len({process["pid"] for process in processes}) == len(processes)
    for process in processes:
        assert process["role"] in ("launcher", "rank", "checkpoint_writer", "resource_tracker", "other")


@pytest.mark.slow
@pytest.mark.parametrize("mode", train_checkpoint.MODES)
def test_job_checkpoint_timings(mode, training_job):
    manifest = succeeded(training_job(mode))

    for checkpoint in manifest["checkpoints"]:
        assert len(checkpoint["blocking_s"]) == 2
        assert len(checkpoint["completion_s"]) == 2
        assert checkpoint["blocking_max_s"] == max(checkpoint["blocking_s"])
        assert checkpoint["completion_max_s"] == max(checkpoint["completion_s"])
        assert min(checkpoint["blocking_s"]) >= 0
        assert min(checkpoint["completion_s"]) >= 0
        assert checkpoint["start_utc"] <= checkpoint["end_utc"]
        if mode not in train_checkpoint.ASYNC_MODES:
            assert checkpoint["completion_s"] == checkpoint["blocking_s"]


@pytest.mark.slow
@pytest.mark.parametrize("mode", train_checkpoint.MODES)
def test_job_rank_records(mode, training_job):
    run = training_job(mode)
    manifest = succeeded(run)

    for rank in (0, 1):
        record = json.loads((run.output_dir / "ranks" / f"rank{rank}.json").read_text())
        assert record["rank"] == rank
        assert record["world_size"] == 2
        assert record["rank_environment"] == "torchrun"
        assert len(record["train_step_s"]) == STEPS
        assert [item["step"] for item in record["checkpoints"]] == list(range(1, STEPS + 1))
        assert (record["checkpoints"][0]["files"] is not None) == (rank == 0)
        rank_process = next(p for p in manifest["processes"] if p["role"] == "rank" and p["rank"] == rank)
        assert record["pid"] == rank_process["pid"]


@pytest.mark.slow
@pytest.mark.parametrize("mode", train_checkpoint.MODES)
def test_job_removes_only_earlier_steps(mode, training_job):
    run = training_job(mode)
    succeeded(run)

    names = sorted(path.name for path in run.checkpoint_dir.iterdir())
    expected = sorted(["keep.txt", *(train_checkpoint.checkpoint_name(mode, step) for step in range(1, STEPS + 1))])
    assert names == expected


@pytest.mark.slow
def test_job_process_writers_stopped_cleanly(training_job):
    manifest = succeeded(training_job("dcp_async_process"))
    processes = manifest["processes"]

    ranks = {process["rank"]: process for process in processes if process["role"] == "rank"}
    writers = {process["rank"]: process for process in processes if process["role"] == "checkpoint_writer"}
    trackers = [process for process in processes if process["role"] == "resource_tracker"]
    assert sorted(writers) == [0, 1]
    for rank, writer in writers.items():
        assert writer["ppid"] == ranks[rank]["pid"], "each rank starts its own background writer"
        assert writer["exit_code"] == 0, "the writer must exit cleanly to leave a Darshan log"
    assert {tracker["ppid"] for tracker in trackers} <= {process["pid"] for process in ranks.values()}


@pytest.mark.slow
def test_job_process_staging_records_pinning(training_job):
    manifest = succeeded(training_job("dcp_async_process"))
    staging = manifest["staging"]

    assert staging["stager"] == "DefaultStager"
    assert staging["pinned_memory_requested"] is True
    assert staging["pinned_memory"] is torch.cuda.is_available()
    assert staging["pinned_memory_by_rank"] == {"0": torch.cuda.is_available(), "1": torch.cuda.is_available()}
    if not torch.cuda.is_available():
        assert "pinned memory needs CUDA" in staging["reason"]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["torch_save", "dcp"])
def test_job_sync_modes_record_no_staging(mode, training_job):
    assert succeeded(training_job(mode))["staging"] is None


@pytest.mark.slow
@pytest.mark.parametrize("mode", train_checkpoint.MODES)
def test_job_restores_last_checkpoint(mode, training_job):
    run = training_job(mode)
    manifest = succeeded(run)
    restore = manifest["restore"]
    last = manifest["checkpoints"][-1]

    assert restore["step"] == STEPS
    assert restore["path"] == last["path"]
    assert restore["method"] == train_checkpoint.RESTORE_METHODS[mode]
    assert len(restore["load_s"]) == 2
    assert min(restore["load_s"]) > 0
    assert restore["load_max_s"] == max(restore["load_s"])
    if mode == "torch_save":
        assert restore["bytes_by_rank"] == {"0": last["bytes"], "1": 0}
    else:
        metadata_bytes = next(item["bytes"] for item in last["file_list"] if item["path"].endswith("/.metadata"))
        assert restore["bytes"] == last["bytes"] + metadata_bytes, "every rank reads the global .metadata"


@pytest.mark.slow
@pytest.mark.parametrize("mode", train_checkpoint.MODES)
def test_job_restore_reads_without_page_cache(mode, training_job):
    run = training_job(mode)
    page_cache = succeeded(run)["restore"]["page_cache"]

    assert page_cache["method"] == run_training.PAGE_CACHE_METHOD
    assert page_cache["fsync_first"] is False, "checkpoint.fsync already synced every file"
    assert page_cache["errors"] == []
    if filesystem_type(run.checkpoint_dir) != "tmpfs":
        assert page_cache["resident_bytes_after"] == 0
        assert page_cache["dropped"] is True


@pytest.mark.slow
@pytest.mark.parametrize("mode", train_checkpoint.MODES)
def test_job_integrity_ok(mode, training_job):
    manifest = succeeded(training_job(mode))
    detail = manifest["integrity_detail"]

    assert manifest["integrity"] == "ok"
    assert detail["step"] == STEPS
    assert detail["ranks_checked"] == ([0] if mode == "torch_save" else [0, 1])
    assert detail["tensors_checked"] > 0
    assert detail["differing"] == []


@pytest.mark.slow
@pytest.mark.parametrize("mode", train_checkpoint.MODES)
def test_job_checkpoints_complete_and_kept(mode, training_job):
    manifest = succeeded(training_job(mode))

    assert [checkpoint["complete"] for checkpoint in manifest["checkpoints"]] == [True] * STEPS
    assert [checkpoint["retained"] for checkpoint in manifest["checkpoints"]] == [True] * STEPS
    assert manifest["retention"] == {"keep": "all", "removed": [],
                                     "kept": [checkpoint["path"] for checkpoint in manifest["checkpoints"]]}


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible, so device cuda would not fail")
def test_job_cuda_without_gpu_fails(tmp_path):
    run = run_job("torch_save", tmp_path, device="cuda")

    assert run.completed.returncode == 1
    assert run.manifest is None
    assert "launch.device is cuda but torch.cuda.is_available() is False" in run.completed.stderr
    assert re.search(r"torch_save training job failed: torchrun \(PID \d+\) exited with code 1; "
                     r"missing rank records in .*: rank0.json, rank1.json", run.completed.stderr)


# ---- a killed rank, recovery and two run ids ----------------------------------------------

@dataclass
class RunIdSequence:
    """Run b of dcp killed mid-save and run again, beside the checkpoints of run a in one checkpoint root."""

    first_dir: Path
    killed: JobRun
    killed_pid: int
    names_after_killed: list[str]
    marker: dict | None
    recovered: JobRun
    first_files_before: dict[str, tuple[int, int, int]]
    first_files_after_killed: dict[str, tuple[int, int, int]]
    first_files_after_recovered: dict[str, tuple[int, int, int]]


def file_identities(directory: Path) -> dict[str, tuple[int, int, int]]:
    """Return {relative path: (inode, size, mtime_ns)} of every file below ``directory``."""
    identities = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            status = path.stat()
            identities[path.relative_to(directory).as_posix()] = (status.st_ino, status.st_size, status.st_mtime_ns)
    return identities


def wait_for_phase(progress_file: Path, phase: str, step: int, timeout_s: float) -> dict:
    """Poll a rank's progress file until it reports ``phase`` at ``step`` and return the file's content."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            state = json.loads(progress_file.read_text())
        except (OSError, json.JSONDecodeError):
            state = {}
        if state.get("phase") == phase and state.get("step") == step:
            return state
        time.sleep(0.1)
    pytest.fail(f"{progress_file} did not report {phase} of step {step} within {timeout_s} s")


@pytest.fixture(scope="module")
def run_id_sequence(tmp_path_factory, training_job) -> RunIdSequence:
    """Put run a's checkpoints (this module's dcp job) under one root, then run b there twice.

    Run b's first job has rank 1 killed by SIGKILL inside its save of step 2; the
    second job (checkpoint.keep none) recovers. Both share one results tree.
    """
    root = tmp_path_factory.mktemp("run_ids")
    output_dir = root / "results" / "dcp" / "train"
    first_dir, second_dir = root / "checkpoints" / "a" / "dcp", root / "checkpoints" / "b" / "dcp"
    shutil.copytree(succeeded_run(training_job("dcp")).checkpoint_dir, first_dir)
    seed_checkpoint_dir(second_dir)
    before = file_identities(first_dir)

    settings = job_settings("dcp", second_dir, run_id="b", keep="none")
    settings["testing"] = {"pause_in_save": {"rank": 1, "step": 2, "seconds": JOB_TIMEOUT_S}}
    process = start_job(settings, output_dir)
    state = wait_for_phase(output_dir / "ranks" / "rank1.progress.json", "saving", 2, JOB_TIMEOUT_S)
    time.sleep(1.0)  # into the pause inside write_data, after rank 0 began writing
    os.kill(state["pid"], signal.SIGKILL)
    killed = finish_job(process, output_dir, second_dir)
    after_killed = file_identities(first_dir)
    names_after_killed = sorted(path.name for path in second_dir.iterdir())
    marker_file = second_dir / "step_2.incomplete"
    marker = json.loads(marker_file.read_text()) if marker_file.is_file() else None

    recovered = finish_job(start_job(job_settings("dcp", second_dir, run_id="b", keep="none"), output_dir),
                           output_dir, second_dir)
    return RunIdSequence(first_dir, killed, state["pid"], names_after_killed, marker, recovered, before,
                         after_killed, file_identities(first_dir))


def succeeded_run(run: JobRun) -> JobRun:
    """Return a run that must have succeeded, else fail with its output."""
    succeeded(run)
    return run


@pytest.mark.slow
def test_killed_rank_fails_the_job(run_id_sequence):
    killed = run_id_sequence.killed

    assert killed.completed.returncode == 1
    assert killed.manifest is None, "a failed job must not leave the rule's output"


@pytest.mark.slow
def test_killed_rank_error_names_mode_rank_path(run_id_sequence):
    stderr = run_id_sequence.killed.completed.stderr
    step_2 = run_id_sequence.killed.checkpoint_dir / "step_2"

    assert "dcp training job failed" in stderr
    assert (f"rank 1 (PID {run_id_sequence.killed_pid}) stopped while saving dcp checkpoint step 2 at {step_2} "
            "without reporting an error, so it was killed") in stderr
    assert f"incomplete checkpoints, each marked with a .incomplete file beside it: {step_2} (no .metadata" in stderr


@pytest.mark.slow
def test_killed_rank_marks_incomplete_checkpoint(run_id_sequence):
    marker = run_id_sequence.marker

    assert run_id_sequence.names_after_killed == ["keep.txt", "step_1", "step_2", "step_2.incomplete"]
    assert marker is not None
    assert marker["complete"] is False
    assert marker["step"] == 2
    assert marker["run_id"] == "b"
    assert "no .metadata" in marker["reason"]


@pytest.mark.slow
def test_rerun_after_kill_recovers(run_id_sequence):
    recovered = run_id_sequence.recovered
    manifest = succeeded(recovered)

    assert [checkpoint["step"] for checkpoint in manifest["checkpoints"]] == list(range(1, STEPS + 1))
    assert manifest["integrity"] == "ok"
    assert sorted(path.name for path in recovered.checkpoint_dir.iterdir()) == ["keep.txt"], \
        "checkpoint.keep none removes every checkpoint of this run and nothing else"


@pytest.mark.slow
def test_other_run_id_never_touched(run_id_sequence):
    sequence = run_id_sequence

    assert "step_3/.metadata" in sequence.first_files_before
    assert sequence.first_files_after_killed == sequence.first_files_before
    assert sequence.first_files_after_recovered == sequence.first_files_before


# ---- Darshan -----------------------------------------------------------------

LOG_PID = re.compile(r"_id\d+-(?P<pid>\d+)_")


@pytest.fixture(scope="module")
def traced_process_job(training_job) -> JobRun:
    """The dcp_async_process job of this module, which ran with the Darshan runtime preloaded."""
    return training_job("dcp_async_process")


needs_darshan = pytest.mark.skipif(
    not DARSHAN_LIBRARY.is_file(),
    reason=f"no Darshan runtime at {DARSHAN_LIBRARY}; build Darshan 3.5 with --without-mpi "
           "and install it into /tmp/darshan-install to run this test")


@pytest.mark.slow
@needs_darshan
def test_job_darshan_logs_name_checkpoints(traced_process_job):
    darshan_module = pytest.importorskip("darshan", reason="PyDarshan is not installed")
    run = traced_process_job
    manifest = succeeded(run)

    log_dir = run.output_dir / "darshan-logs"
    assert manifest["darshan"]["log_dir"] == str(log_dir)
    assert manifest["darshan"]["environment"]["LD_PRELOAD"].split(":")[0] == str(DARSHAN_LIBRARY)
    names_by_pid = {}
    for path in sorted(log_dir.rglob("*.darshan")):
        report = darshan_module.DarshanReport(str(path), read_all=True)
        names_by_pid[int(LOG_PID.search(path.name)["pid"])] = set(report.name_records.values())
    pids = {process["pid"] for process in manifest["processes"]}
    assert pids <= set(names_by_pid), f"processes without a Darshan log: {sorted(pids - set(names_by_pid))}"

    writer_pids = {process["rank"]: process["pid"] for process in manifest["processes"]
                   if process["role"] == "checkpoint_writer"}
    for checkpoint in manifest["checkpoints"]:
        for item in checkpoint["file_list"]:
            absolute = str(run.checkpoint_dir / item["path"])
            assert absolute in names_by_pid[writer_pids[item["rank"]]], \
                f"{absolute} missing from the log of rank {item['rank']}'s background writer"


@pytest.mark.slow
@needs_darshan
def test_job_darshan_writer_log_roles(traced_process_job, tmp_path):
    import locate_logs

    run = traced_process_job
    manifest = succeeded(run)
    processes_csv = tmp_path / "processes.csv"

    status = locate_logs.main(["--mode", "dcp_async_process", "--manifest", str(run.output_dir / "manifest.json"),
                               "--output-dir", str(tmp_path / "logs"), "--processes", str(processes_csv),
                               "--info", str(tmp_path / "info.json")])

    table = pd.read_csv(processes_csv)
    writers = table[table["role"] == "checkpoint_writer"]
    expected = {process["pid"]: process["rank"] for process in manifest["processes"]
                if process["role"] == "checkpoint_writer"}
    assert status == 0
    assert dict(zip(writers["pid"], writers["rank"].astype(int))) == expected
    assert (writers["checkpoint_bytes_written"] > 0).all()
    assert sorted(table.loc[table["role"] == "rank", "rank"].astype(int)) == [0, 1]
    assert (table["role"] == "resource_tracker").sum() >= 1


@pytest.mark.slow
def test_dcp_threads_shard_per_thread(tmp_path):
    """checkpoint.dcp_threads 2: each rank writes two shard files per checkpoint, and the restore still matches."""
    output_dir = tmp_path / "results" / "dcp" / "train"
    checkpoint_dir = tmp_path / "checkpoints" / "dcp"
    settings = job_settings("dcp", checkpoint_dir)
    settings["checkpoint"]["dcp_threads"] = 2

    manifest = succeeded(finish_job(start_job(settings, output_dir), output_dir, checkpoint_dir))

    last = manifest["checkpoints"][-1]
    shards = sorted(Path(entry["path"]).name for entry in last["file_list"] if entry["path"].endswith(".distcp"))
    assert shards == ["__0_0.distcp", "__0_1.distcp", "__1_0.distcp", "__1_1.distcp"]
    assert set(last["bytes_by_rank"]) == {"0", "1"}
    assert manifest["integrity"] == "ok"
