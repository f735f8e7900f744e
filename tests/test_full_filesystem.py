"""A checkpoint file system that fills up during a save: a small tmpfs the test mounts."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from test_training import finish_job, job_settings, start_job

# Larger than the 8 MiB file system: with the default ViT each torch.save file is
# about 43 MB and each DCP shard about 22 MB.
FULL_MODEL = {"patch_size": 16, "num_layers": 4, "num_heads": 4, "hidden_dim": 256, "mlp_dim": 1024}


@pytest.fixture
def small_filesystem(tmp_path):
    """Mount an 8 MiB tmpfs under tmp_path; skip where this process may not mount."""
    mount_point = tmp_path / "smallfs"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def run_on(mode: str, checkpoint_dir: Path, output_dir: Path):
    settings = job_settings(mode, checkpoint_dir)
    settings["model"]["small_vit"] = FULL_MODEL
    settings["training"]["steps"] = 2
    return finish_job(start_job(settings, output_dir), output_dir, checkpoint_dir)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["torch_save", "dcp"])
def test_full_filesystem_names_mode_rank_path(mode, small_filesystem, tmp_path):
    checkpoint_dir = small_filesystem / "run" / mode

    run = run_on(mode, checkpoint_dir, tmp_path / "results" / mode)

    assert run.completed.returncode != 0
    error = run.completed.stderr
    assert f"{mode} checkpoint save failed on rank 0 for {checkpoint_dir}/step_1" in error
    assert "MiB free of 8.0 MiB" in error
    assert "Traceback" not in error.split("training job failed")[-1]
    assert run.manifest is None
    markers = list(checkpoint_dir.glob("*.incomplete"))
    assert [marker.name for marker in markers] == [f"step_1{'.pt' if mode == 'torch_save' else ''}.incomplete"]
    assert not list(checkpoint_dir.glob(".*.tmp"))


@pytest.mark.slow
def test_rerun_recovers_after_space_freed(small_filesystem, tmp_path):
    checkpoint_dir = small_filesystem / "run" / "dcp"
    output_dir = tmp_path / "results" / "dcp"
    failed = run_on("dcp", checkpoint_dir, output_dir)
    assert failed.completed.returncode != 0

    subprocess.run(["mount", "-o", "remount,size=256m", str(small_filesystem)], check=True)
    rerun = run_on("dcp", checkpoint_dir, output_dir)

    assert rerun.completed.returncode == 0, rerun.completed.stderr[-4000:]
    assert rerun.manifest is not None
    assert all(checkpoint["complete"] for checkpoint in rerun.manifest["checkpoints"])
    assert not list(checkpoint_dir.glob("*.incomplete"))
