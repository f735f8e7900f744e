"""Log location and role attribution on the real Darshan logs in tests/data."""

from __future__ import annotations

import datetime as dt
import json
import shutil

import pandas as pd
import pytest

import locate_logs
from conftest import DATA, JOBS, checkpoint_root, manifest_for, write_json


def roles_by_pid(table: pd.DataFrame) -> dict[int, tuple[str, int | None]]:
    return {int(row.pid): (row.role, None if pd.isna(row.rank) else int(row.rank)) for row in table.itertuples()}


def expected_roles(job: str) -> dict[int, tuple[str, int | None]]:
    processes = JOBS[job]
    expected = {processes["launcher"]: ("launcher", None)}
    expected.update({pid: ("rank", rank) for rank, pid in processes["ranks"].items()})
    expected.update({pid: ("checkpoint_writer", rank) for rank, pid in processes.get("writers", {}).items()})
    expected.update({pid: ("resource_tracker", None) for pid in processes.get("trackers", [])})
    return expected


@pytest.mark.parametrize("job", sorted(JOBS))
def test_infer_roles_without_manifest(job):
    found, info = locate_logs.locate(job, None, DATA / job / "logs", None, [], 0)
    table = locate_logs.process_table(found, info["checkpoint_dir"])

    assert info["checkpoint_dir"] == checkpoint_root(job)
    assert roles_by_pid(table) == expected_roles(job)
    assert (table["error"] == "").all()


def test_dated_tree_with_manifest(tmp_path, copy_logs):
    own = tmp_path / "darshan-logs"
    copy_logs("dcp", own / "2026" / "12" / "4")
    manifest = manifest_for("dcp", own)

    found, info = locate_logs.locate("dcp", manifest, None, None, [], 0)
    table = locate_logs.process_table(found, info["checkpoint_dir"])

    assert roles_by_pid(table) == expected_roles("dcp")
    assert set(table["rank_source"]) == {"manifest"}
    assert str(own / "2026" / "12" / "4") in info["searched"]


def test_flat_shared_directory_keeps_only_job(tmp_path, copy_logs):
    shared = copy_logs("torch_save", tmp_path / "site-logs")
    copy_logs("dcp", shared)
    manifest = manifest_for("torch_save", tmp_path / "own-logs-never-written")

    found, _ = locate_logs.locate("torch_save", manifest, None, None, [shared], 0)

    assert {entry.name.pid for entry in found} == {4406, 4409, 4410}


def test_slurm_job_id_selects_all_processes(tmp_path, copy_logs):
    shared = tmp_path / "site-logs"
    source = copy_logs("dcp_async_process", tmp_path / "source")
    shared.mkdir()
    for log in source.iterdir():
        renamed = log.name.replace(f"_id{log.name.split('_id')[1].split('-')[0]}-", "_id777-")
        shutil.copy2(log, shared / renamed)
    manifest = manifest_for("dcp_async_process", tmp_path / "unused")
    manifest["job_id"] = "777"
    manifest["processes"] = [p for p in manifest["processes"] if p["role"] != "checkpoint_writer"]
    manifest["processes"] += [{"pid": 5078, "role": "checkpoint_writer", "rank": 0},
                              {"pid": 5077, "role": "checkpoint_writer", "rank": 1}]

    found, _ = locate_logs.locate("dcp_async_process", manifest, None, None, [shared], 0)
    table = locate_logs.process_table(found, checkpoint_root("dcp_async_process"))

    assert len(table) == 7
    assert roles_by_pid(table)[5075] == ("resource_tracker", None)
    assert roles_by_pid(table)[5078] == ("checkpoint_writer", 0)


def test_missing_rank_log_names_pids_and_directories(tmp_path, copy_logs):
    own = copy_logs("dcp", tmp_path / "darshan-logs")
    for log in own.glob("*_id4702-4702_*"):
        log.unlink()
    manifest = manifest_for("dcp", own)

    with pytest.raises(locate_logs.MissingLogError) as error:
        locate_logs.locate("dcp", manifest, None, None, [], 0.2)

    message = str(error.value)
    assert "PID 4702" in message
    assert "rank of rank 1" in message
    assert str(own) in message


def test_missing_launcher_log_is_not_an_error(tmp_path, copy_logs):
    own = copy_logs("torch_save", tmp_path / "darshan-logs")
    for log in own.glob("*_id4406-4406_*"):
        log.unlink()

    found, _ = locate_logs.locate("torch_save", manifest_for("torch_save", own), None, None, [], 0)

    assert {entry.name.pid for entry in found} == {4409, 4410}


def test_untraced_job_has_no_logs(tmp_path):
    manifest = manifest_for("dcp", tmp_path)
    manifest["darshan"] = None

    found, info = locate_logs.locate("dcp", manifest, None, None, [], 0)

    assert found == []
    assert info["traced"] is False


def test_damaged_log_keeps_its_row(tmp_path, copy_logs):
    logs = copy_logs("dcp", tmp_path / "logs")
    rank1 = next(logs.glob("*_id4702-4702_*"))
    rank1.write_bytes(rank1.read_bytes()[:2000])
    (logs / "0_python3_id4702-4702_12-4-1-1_1.darshan_partial").write_bytes(b"")

    found, info = locate_logs.locate("dcp", None, logs, None, [], 0)
    table = locate_logs.process_table(found, info["checkpoint_dir"])

    damaged = table[table["error"] != ""]
    assert len(damaged) == 2
    assert any("truncated" in error for error in damaged["error"])
    assert any("unfinished log" in error for error in damaged["error"])
    assert roles_by_pid(table[table["error"] == ""])[4701] == ("rank", 0)


def test_dated_directories_cover_local_and_utc_days(tmp_path):
    start = dt.datetime(2026, 12, 31, 23, 30, tzinfo=dt.timezone.utc)
    end = start + dt.timedelta(hours=1)

    directories = locate_logs.dated_directories(tmp_path, start, end)

    assert tmp_path / "2026" / "12" / "31" in directories
    assert tmp_path / "2027" / "1" / "1" in directories


def test_cli_writes_table_and_copies(tmp_path, copy_logs):
    own = copy_logs("dcp_async_process", tmp_path / "darshan-logs")
    manifest = write_json(tmp_path / "manifest.json", manifest_for("dcp_async_process", own))

    status = locate_logs.main([
        "--mode", "dcp_async", "--manifest", str(manifest), "--output-dir", str(tmp_path / "copied"),
        "--processes", str(tmp_path / "processes.csv"), "--info", str(tmp_path / "info.json"),
    ])

    assert status == 0
    table = pd.read_csv(tmp_path / "processes.csv")
    assert len(list((tmp_path / "copied").glob("*.darshan"))) == 7
    assert table.loc[table["pid"] == 5077, "checkpoint_bytes_written"].item() == 3 * 22052457
    assert json.loads((tmp_path / "info.json").read_text())["logs"] == 7
