"""The storage baseline job: real ranks under torchrun writing and reading the file system."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import storage_baseline
from conftest import REPOSITORY

MIB = 1024**2


def manifest(checkpoint_bytes: list[int], world_size: int = 2) -> dict:
    return {"world_size": world_size, "checkpoints": [{"bytes": size} for size in checkpoint_bytes]}


def test_bytes_per_rank_is_largest_checkpoint_share():
    manifests = [manifest([40 * MIB, 44 * MIB]), manifest([60 * MIB], world_size=4)]

    assert storage_baseline.bytes_per_rank_from_manifests(manifests) == 22 * MIB


def test_bytes_per_rank_needs_a_checkpoint():
    with pytest.raises(ValueError, match="no manifest records a checkpoint"):
        storage_baseline.bytes_per_rank_from_manifests([{"world_size": 2, "checkpoints": []}])


def test_write_and_read_file(tmp_path):
    path = tmp_path / "data.bin"

    block = storage_baseline.make_block(5 * MIB + 3, block_bytes=MIB)

    storage_baseline.write_file(path, 5 * MIB + 3, block, fsync=True)

    assert len(block) == MIB

    assert path.stat().st_size == 5 * MIB + 3
    assert storage_baseline.drop_page_cache(path) is True
    assert storage_baseline.read_file(path, block_bytes=MIB) == 5 * MIB + 3


def test_baseline_job_two_ranks(tmp_path):
    settings = {"launch": {"nodes": 1, "ranks_per_node": 2, "launcher": "torchrun"},
                "checkpoint": {"dir": str(tmp_path / "baseline"), "fsync": True}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest([8 * MIB])))

    completed = subprocess.run(
        [sys.executable, str(REPOSITORY / "workflow" / "scripts" / "storage_baseline.py"),
         "--settings", json.dumps(settings), "--manifest", str(tmp_path / "manifest.json"),
         "--repeats", "2", "--block-bytes", str(MIB), "--output", str(tmp_path / "baseline.json")],
        capture_output=True, text=True, timeout=300,
    )

    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads((tmp_path / "baseline.json").read_text())
    assert result["ranks"] == 2
    assert result["bytes_per_rank"] == 4 * MIB
    assert len(result["write_s"]) == 2
    assert result["write_mib_per_s"] > 0
    assert result["read_mib_per_s"] > 0
    assert result["page_cache_dropped_before_read"] is True
    assert list((tmp_path / "baseline").iterdir()) == []


def test_table_judges_modes_against_baseline():
    import summary_table

    row = {"checkpoint_bytes_on_disk": 3 * 100 * MIB, "checkpoints": 3, "completion_mean_s": 2.0,
           "bandwidth_by_slowest_mib_per_s": 90.0, "write_bandwidth_mib_per_s": 40.0,
           "restore_throughput_mib_per_s": 150.0}
    baseline = {"write_mib_per_s": 100.0, "read_mib_per_s": 300.0}

    judged = summary_table.add_baseline(dict(row), baseline)

    assert judged["save_fraction_of_baseline"] == 0.5
    assert judged["darshan_fraction_of_baseline"] == 0.4
    assert judged["restore_fraction_of_baseline"] == 0.5


def test_table_without_baseline_or_trace():
    import summary_table

    untraced = {"checkpoint_bytes_on_disk": 300, "checkpoints": 3, "completion_mean_s": 1.0,
                "bandwidth_by_slowest_mib_per_s": summary_table.NOT_TRACED,
                "write_bandwidth_mib_per_s": summary_table.NOT_TRACED}

    judged = summary_table.add_baseline(dict(untraced), {"write_mib_per_s": 100.0, "read_mib_per_s": 300.0})

    assert judged["darshan_fraction_of_baseline"] is None
    assert summary_table.add_baseline(dict(untraced), None) == untraced


@pytest.mark.parametrize("text, message", [
    ('{"mode": "torch_sa', "cannot read the manifest .* delete it and rerun"),
    ('"x"', "is not a JSON object; delete it and rerun"),
])
def test_damaged_manifest_named_with_fix(tmp_path, text, message):
    manifest = tmp_path / "manifest.json"
    manifest.write_text(text)

    with pytest.raises(ValueError, match=message):
        storage_baseline.read_manifest(manifest)
