"""Shared fixtures: the real Darshan logs in tests/data and manifests built from their records."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parent.parent
DATA = REPOSITORY / "tests" / "data" / "darshan-logs"

# Processes of each job in tests/data/darshan-logs, as recorded when the logs were made.
JOBS = {
    "torch_save": {"launcher": 4406, "ranks": {0: 4409, 1: 4410}},
    "dcp": {"launcher": 4698, "ranks": {0: 4701, 1: 4702}},
    "dcp_async_thread": {"launcher": 4916, "ranks": {0: 4919, 1: 4920}},
    "dcp_async_process": {"launcher": 5023, "ranks": {0: 5026, 1: 5027},
                          "writers": {0: 5078, 1: 5077}, "trackers": [5075, 5076]},
    "torch_save_spawn": {"launcher": 6356, "ranks": {0: 6359, 1: 6360}, "trackers": [6358]},
    "dcp_dxt": {"launcher": 5951, "ranks": {0: 5955, 1: 5956}},
}
DCP_SHARD = re.compile(r"__(\d+)_\d+\.distcp$")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the tests marked torch_threads after all others.

    They leave torch's threads (and a process group's) running in the pytest
    process. A process pool forked after that, as the log readers use, can
    inherit a lock one of those threads held and hang, so no test may fork after them.
    """
    items.sort(key=lambda item: item.get_closest_marker("torch_threads") is not None)


def checkpoint_files(job: str) -> list[tuple[int, str]]:
    """Return (bytes, path) of every checkpoint file the job left on disk."""
    rows = []
    for line in (DATA / job / "checkpoint_files.txt").read_text().splitlines():
        size, path = line.split()
        rows.append((int(size), path.removeprefix("./")))
    return rows


def owner_rank(path: str) -> int:
    """Return the rank that wrote a checkpoint file: the shard's rank, else rank 0."""
    shard = DCP_SHARD.search(path)
    return int(shard.group(1)) if shard else 0


def bytes_on_disk_by_rank(job: str) -> dict[int, int]:
    totals: dict[int, int] = {}
    for size, path in checkpoint_files(job):
        totals[owner_rank(path)] = totals.get(owner_rank(path), 0) + size
    return totals


def checkpoint_root(job: str) -> str:
    return (DATA / job / "checkpoint_root.txt").read_text().strip()


def manifest_for(job: str, log_dir: Path) -> dict:
    """Build the manifest the training job would have written for one job of tests/data."""
    processes = JOBS[job]
    entries = [{"pid": processes["launcher"], "ppid": None, "role": "launcher", "rank": None}]
    entries += [{"pid": pid, "ppid": processes["launcher"], "role": "rank", "rank": rank}
                for rank, pid in processes["ranks"].items()]
    entries += [{"pid": pid, "ppid": processes["ranks"][rank], "role": "checkpoint_writer", "rank": rank}
                for rank, pid in processes.get("writers", {}).items()]
    steps: dict[str, list] = {}
    for size, path in checkpoint_files(job):
        steps.setdefault(path.split("/")[0], []).append({"path": path, "bytes": size, "rank": owner_rank(path)})
    checkpoints = []
    for step, (name, files) in enumerate(sorted(steps.items())):
        by_rank: dict[str, int] = {}
        for file in files:
            by_rank[str(file["rank"])] = by_rank.get(str(file["rank"]), 0) + file["bytes"]
        checkpoints.append({"step": step, "path": name, "bytes": sum(f["bytes"] for f in files), "files": len(files),
                            "file_list": files, "bytes_by_rank": by_rank,
                            "blocking_s": [0.1, 0.1], "blocking_max_s": 0.1,
                            "completion_s": [0.2, 0.2], "completion_max_s": 0.2})
    return {
        "manifest_version": 1, "mode": job, "run_id": "test", "job_id": None, "host": "localhost",
        "launcher": "torchrun", "world_size": len(processes["ranks"]),
        "start_utc": "2026-12-04T19:56:00Z", "end_utc": "2026-12-04T20:00:00Z",
        "checkpoint_dir": checkpoint_root(job), "processes": entries, "checkpoints": checkpoints,
        "darshan": {"log_dir": str(log_dir)},
    }


@pytest.fixture
def copy_logs(tmp_path):
    """Copy one job's logs into a directory under tmp_path and return that directory."""

    def copy(job: str, destination: Path) -> Path:
        destination.mkdir(parents=True, exist_ok=True)
        for log in (DATA / job / "logs").iterdir():
            shutil.copy2(log, destination / log.name)
        return destination

    return copy


def write_json(path: Path, value: dict) -> Path:
    path.write_text(json.dumps(value))
    return path
