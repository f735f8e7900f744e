"""Tests of the training job: the rank program, the job wrapper and the manifest.

The job tests start real 2-rank torch.distributed jobs (gloo on 127.0.0.1) through
run_training.py and compare the manifest with the checkpoint files on disk. Each mode
runs once per module. The whole file took 95 s on a 2-core VM without a GPU.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

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


def job_settings(mode: str, checkpoint_dir: Path, darshan: dict | None = None, device: str = "cpu") -> dict:
    """Return settings of the Snakefile's shape, with a ViT shrunk so that start-up dominates the job."""
    return {
        "run_id": "test",
        "mode": mode,
        "model": {"name": "small_vit", "pretrained": False,
                  "small_vit": {"patch_size": 16, "num_layers": 2, "num_heads": 2, "hidden_dim": 64, "mlp_dim": 128}},
        "training": {"steps": STEPS, "checkpoint_interval": 1, "batch_size": 4, "image_size": 32,
                     "num_classes": 10, "learning_rate": 0.001, "seed": 0},
        "launch": {"nodes": 1, "ranks_per_node": 2, "device": device, "launcher": "torchrun"},
        "checkpoint": {"dir": str(checkpoint_dir), "fsync": True},
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


def run_job(mode: str, root: Path, darshan: dict | None = None, device: str = "cpu") -> JobRun:
    """Run run_training.py for one mode under ``root`` and return its outcome.

    An earlier checkpoint (``step_99``) and an unrelated file (``keep.txt``) are put
    into the checkpoint directory first, to check what the wrapper removes.
    """
    output_dir = root / "results" / mode / "train"
    checkpoint_dir = root / "checkpoints" / mode
    (checkpoint_dir / "step_99").mkdir(parents=True)
    (checkpoint_dir / "step_99" / "__0_0.distcp").write_bytes(b"earlier run")
    (checkpoint_dir / "keep.txt").write_text("not a checkpoint")

    settings = job_settings(mode, checkpoint_dir, darshan, device)
    command = [sys.executable, str(RUN_TRAINING), "--mode", mode, "--settings", json.dumps(settings),
               "--output-dir", str(output_dir)]
    completed = subprocess.run(command, env=job_environment(), capture_output=True, text=True,
                               timeout=JOB_TIMEOUT_S, check=False)
    manifest_path = output_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
    return JobRun(output_dir, checkpoint_dir, completed, manifest)


def succeeded(run: JobRun) -> dict:
    """Return the manifest of a run that must have succeeded, else fail with its output."""
    assert run.completed.returncode == 0, f"run_training.py failed:\n{run.completed.stderr[-6000:]}"
    assert run.manifest is not None, "run_training.py exited 0 but wrote no manifest.json"
    return run.manifest


@pytest.fixture(scope="module")
def training_job(tmp_path_factory):
    """Run each mode's job at most once per module and return the run."""
    runs: dict[str, JobRun] = {}

    def run(mode: str) -> JobRun:
        if mode not in runs:
            runs[mode] = run_job(mode, tmp_path_factory.mktemp(mode))
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
                       "/venv/bin/python", "/w/train_checkpoint.py", "--mode", "dcp"]


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

    assert len(ports) == 3, "the modes of one Slurm job must get different ports"
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


@pytest.mark.parametrize("mode", train_checkpoint.MODES)
def test_save_failure_names_mode_rank_path(mode, single_rank_group, tmp_path):
    training = {"image_size": 32, "num_classes": 10, "batch_size": 2}
    model_settings = {"name": "small_vit", "pretrained": False,
                      "small_vit": {"patch_size": 16, "num_layers": 1, "num_heads": 2, "hidden_dim": 32, "mlp_dim": 64}}
    model = train_checkpoint.wrap_model(train_checkpoint.build_model(model_settings, training), mode,
                                        torch.device("cpu"), 1)
    optimizer = torch.optim.Adam(model.parameters())
    generator = torch.Generator().manual_seed(0)
    train_checkpoint.train_step(model, optimizer, *train_checkpoint.random_batch(training, torch.device("cpu"), generator))
    # A regular file where the checkpoint directory should be makes every save fail.
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    checkpointer = train_checkpoint.Checkpointer(mode, blocker / "checkpoints", True, 0)
    expected_path = blocker / "checkpoints" / train_checkpoint.checkpoint_name(mode, 1)

    with pytest.raises(train_checkpoint.CheckpointSaveError) as failure:
        checkpointer.save(1, model, optimizer)
        checkpointer.finish()

    message = str(failure.value)
    assert message.startswith(f"{mode} checkpoint save failed on rank 0 for {expected_path}:")
    assert "NotADirectoryError" in message


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
    assert manifest["darshan"] is None
    assert manifest["settings"] == job_settings(mode, run.checkpoint_dir)
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
@pytest.mark.parametrize("mode", ["dcp", "dcp_async"])
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
        if mode != "dcp_async":
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
@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible, so device cuda would not fail")
def test_job_cuda_without_gpu_fails(tmp_path):
    run = run_job("torch_save", tmp_path, device="cuda")

    assert run.completed.returncode == 1
    assert run.manifest is None
    assert "launch.device is cuda but torch.cuda.is_available() is False" in run.completed.stderr
    assert re.search(r"torch_save training job failed: torchrun \(PID \d+\) exited with code 1; "
                     r"missing rank records in .*: rank0.json, rank1.json", run.completed.stderr)


# ---- Darshan -----------------------------------------------------------------

LOG_PID = re.compile(r"_id\d+-(?P<pid>\d+)_")


@pytest.mark.slow
@pytest.mark.skipif(not DARSHAN_LIBRARY.is_file(),
                    reason=f"no Darshan runtime at {DARSHAN_LIBRARY}; build Darshan 3.5 with --without-mpi "
                           "and install it into /tmp/darshan-install to run this test")
def test_job_darshan_logs_name_checkpoints(tmp_path):
    darshan_module = pytest.importorskip("darshan", reason="PyDarshan is not installed")
    darshan = {"runtime": {"library": str(DARSHAN_LIBRARY), "version": "3.5.0",
                           "log_path_by_env": ["DARSHAN_LOG_DIR_PATH"], "default_log_path": None,
                           "jobid_env": "SLURM_JOB_ID"},
               "max_records": 50000, "modules": ["POSIX", "STDIO"], "dxt": False}

    run = run_job("dcp", tmp_path, darshan=darshan)
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

    rank_pids = {process["rank"]: process["pid"] for process in manifest["processes"] if process["role"] == "rank"}
    for checkpoint in manifest["checkpoints"]:
        for item in checkpoint["file_list"]:
            absolute = str(run.checkpoint_dir / item["path"])
            assert absolute in names_by_pid[rank_pids[item["rank"]]], f"{absolute} missing from rank {item['rank']}'s log"
