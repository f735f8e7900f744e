"""End-to-end runs of the Snakemake workflow under tmp_path."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import DATA, REPOSITORY, bytes_on_disk_by_rank, checkpoint_files

DARSHAN_BUILD = Path("/tmp/darshan-install/lib/libdarshan.so")

# A model small enough that three 2-rank training jobs finish in a minute on 2 cores.
TINY_MODEL = {
    "model": {"name": "small_vit", "small_vit": {"patch_size": 16, "num_layers": 2, "num_heads": 2,
                                                 "hidden_dim": 64, "mlp_dim": 128}},
    "training": {"steps": 2, "checkpoint_interval": 1, "batch_size": 4, "image_size": 32},
}


def run_snakemake(workdir: Path, *arguments: str, config: dict | None = None, timeout_s: int = 900,
                  env: dict | None = None) -> subprocess.CompletedProcess:
    """Run Snakemake on the repository's Snakefile in ``workdir``; kill its process group on timeout."""
    command = [sys.executable, "-m", "snakemake", "-s", str(REPOSITORY / "Snakefile"), "--directory", str(workdir)]
    if config is not None:
        (workdir / "test-config.yaml").write_text(yaml.safe_dump(config))
        command += ["--configfile", str(workdir / "test-config.yaml")]
    process = subprocess.Popen(command + list(arguments), cwd=workdir, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True, env=env)
    try:
        output, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"snakemake timed out after {timeout_s} s:\n{output[-5000:]}")
    return subprocess.CompletedProcess(process.args, process.returncode, output, "")


def test_lint_clean(tmp_path):
    result = run_snakemake(tmp_path, "--lint")

    assert result.returncode == 0, result.stdout
    assert "Lints for" not in result.stdout


def test_dry_run_lists_every_mode(tmp_path):
    result = run_snakemake(tmp_path, "-n", "--cores", "2", config={"checkpoint": {"root": str(tmp_path / "ckpt")}})

    assert result.returncode == 0, result.stdout
    for mode in ("torch_save", "dcp", "dcp_async"):
        assert f"mode={mode}" in result.stdout or f"mode: {mode}" in result.stdout


def test_existing_logs_produce_table(tmp_path):
    jobs = {"torch_save": "torch_save", "dcp": "dcp", "dcp_async": "dcp_async_thread",
            "dcp_async_process": "dcp_async_process"}
    config = {"existing_logs": {mode: {"logs": str(DATA / job / "logs")} for mode, job in jobs.items()}}

    result = run_snakemake(tmp_path, "--cores", "2", config=config)

    assert result.returncode == 0, result.stdout[-5000:]
    table = pd.read_csv(tmp_path / "results" / "summary.csv")
    assert list(table["mode"]) == list(jobs)
    for mode, job in jobs.items():
        row = table[table["mode"] == mode].iloc[0]
        assert int(row["bytes_written_checkpoint"]) == sum(size for size, _ in checkpoint_files(job))
        on_disk = bytes_on_disk_by_rank(job)
        assert row["checkpoint_bytes_by_rank"] == " / ".join(str(on_disk.get(rank, 0)) for rank in (0, 1))
        assert int(row["checkpoints"]) == 3
    processes = pd.read_csv(tmp_path / "results" / "dcp_async_process" / "darshan" / "processes.csv")
    assert sorted(processes["role"]) == sorted(["launcher", "rank", "rank", "checkpoint_writer",
                                                "checkpoint_writer", "resource_tracker", "resource_tracker"])
    summaries = list((tmp_path / "results" / "dcp_async_process" / "darshan" / "summaries").glob("*.html"))
    assert len(summaries) == 2
    assert "Checkpoint I/O by mode" in result.stdout


def local_run_config(tmp_path: Path, darshan: dict) -> dict:
    return {**TINY_MODEL, "run_id": "e2e", "checkpoint": {"root": str(tmp_path / "checkpoints")},
            "darshan": darshan, "summaries": {"html": "none"}}


@pytest.mark.slow
def test_local_run_untraced(tmp_path):
    config = local_run_config(tmp_path, {"enabled": False})

    result = run_snakemake(tmp_path, "--profile", str(REPOSITORY / "profiles" / "local"), config=config)

    assert result.returncode == 0, result.stdout[-5000:]
    table = pd.read_csv(tmp_path / "results" / "summary.csv")
    assert list(table["mode"]) == ["torch_save", "dcp", "dcp_async", "dcp_async_process"]
    assert (table["bytes_written_checkpoint"] == "not traced").all()
    assert (table["checkpoints"] == 2).all()
    assert (table["blocking_mean_s"] > 0).all()
    assert (tmp_path / "results" / "report.html").stat().st_size > 0
    assert list((tmp_path / "results" / "plots").glob("modes_*.png"))
    assert (tmp_path / "results" / "insights.md").is_file()
    assert (table["integrity"] == "ok").all()
    assert (table["baseline_write_mib_per_s"] > 0).all()
    for mode in table["mode"]:
        manifest = json.loads((tmp_path / "results" / mode / "train" / "manifest.json").read_text())
        on_disk = sum(path.stat().st_size for path in (tmp_path / "checkpoints" / "e2e" / mode).rglob("*") if path.is_file())
        assert sum(c["bytes"] for c in manifest["checkpoints"][-1:]) <= on_disk
        assert manifest["checkpoint_dir"] == str(tmp_path / "checkpoints" / "e2e" / mode)


@pytest.mark.slow
@pytest.mark.skipif(not DARSHAN_BUILD.exists(), reason=f"no Darshan runtime at {DARSHAN_BUILD}")
def test_local_run_traced(tmp_path):
    config = local_run_config(tmp_path, {"enabled": True, "library": str(DARSHAN_BUILD)})

    result = run_snakemake(tmp_path, "--profile", str(REPOSITORY / "profiles" / "local"), config=config)

    assert result.returncode == 0, result.stdout[-5000:]
    table = pd.read_csv(tmp_path / "results" / "summary.csv")
    for row in table.itertuples():
        manifest = json.loads((tmp_path / "results" / row.mode / "train" / "manifest.json").read_text())
        assert int(row.bytes_written_checkpoint) == sum(c["bytes"] for c in manifest["checkpoints"])
        on_disk_by_rank = [sum(c["bytes_by_rank"].get(str(rank), 0) for c in manifest["checkpoints"]) for rank in (0, 1)]
        assert row.checkpoint_bytes_by_rank == " / ".join(str(number) for number in on_disk_by_rank)
        assert not isinstance(row.flags, str) or "partial" not in row.flags
