"""The per-rank view on the real logs in tests/data: bytes and time per rank, intervals, phases, hidden share."""

from __future__ import annotations

import datetime as dt
import functools
import json

import pandas as pd
import pytest

import darshan_logs
import darshan_metrics
import locate_logs
import rank_view
from conftest import DATA, JOBS, checkpoint_files, checkpoint_root, manifest_for


@functools.lru_cache(maxsize=None)
def located(job: str) -> tuple[pd.DataFrame, dict]:
    """Return the processes table and locate info of a job of tests/data, as locate_logs.py writes them."""
    checkpoint_dir = None if job in JOBS else "/tmp/partial-ckpt"
    found, info = locate_logs.locate(job, None, DATA / job / "logs", checkpoint_dir, [], 0)
    processes = locate_logs.process_table(found, info["checkpoint_dir"])
    processes["error"] = processes["error"].fillna("")
    return processes, info


@functools.lru_cache(maxsize=None)
def metrics_for(job: str) -> dict:
    """Return darshan_metrics.py's figures for a job, with the manifest conftest builds for it."""
    processes, info = located(job)
    manifest = manifest_for(job, DATA / job / "logs") if job in JOBS else None
    return darshan_metrics.compute(job, processes, DATA / job / "logs", info, manifest)[0]


def view_for(job: str, rank_records: dict | None = None, manifest: dict | None = None) -> rank_view.RankView:
    """Return the per-rank view of a job of tests/data."""
    processes, info = located(job)
    return rank_view.compute(job, processes, DATA / job / "logs", info, manifest, rank_records or {})


@functools.lru_cache(maxsize=None)
def plain_view(job: str) -> rank_view.RankView:
    """Return the view of a job without phase timing, computed once per test session."""
    return view_for(job)


def utc(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, tz=dt.timezone.utc).isoformat().replace("+00:00", "Z")


def rank_records_around(job: str, asynchronous: bool, margin_s: float) -> dict[int, dict]:
    """Build rank records whose saves sit around each checkpoint's real I/O in the job's logs.

    Synchronous records block from ``margin_s`` before the first open to
    ``margin_s`` after the last close of each checkpoint. Asynchronous records
    block briefly before the I/O, complete after it and train on for 5 s after
    the last save, so that all the I/O runs during training.
    """
    checkpoints = plain_view(job).per_checkpoint.sort_values("first_open_unix_s")
    records = {}
    for rank in (0, 1):
        saves = []
        for step, row in enumerate(checkpoints.itertuples(), start=1):
            if asynchronous:
                start_s, blocking_s = row.first_open_unix_s - margin_s, 0.001
            else:
                start_s, blocking_s = row.first_open_unix_s - margin_s, row.last_close_unix_s - row.first_open_unix_s + 2 * margin_s
            end_s = max(start_s + blocking_s, row.last_close_unix_s + margin_s)
            saves.append({"step": step, "start_utc": utc(start_s), "end_utc": utc(end_s), "blocking_s": blocking_s})
        records[rank] = {"rank": rank, "mode": job, "checkpoints": saves, "train_step_s": [0.5, 0.5, 0.5, 5.0]}
    return records


# ---- interval arithmetic -----------------------------------------------------------------

def test_union_merges_overlaps():
    assert rank_view.interval_union([(3, 4), (0, 2), (1, 3)]) == [(0, 4)]
    assert rank_view.union_length_s([(0, 1), (2, 3), (2.5, 4)]) == pytest.approx(3)


def test_overlap_of_two_sets():
    assert rank_view.overlap_length_s([(0, 10)], [(1, 2), (5, 7)]) == pytest.approx(3)
    assert rank_view.overlap_length_s([(0, 1)], [(2, 3)]) == 0


def test_hidden_time_inside_loop_outside_blocks():
    writes = [(0, 4), (9, 12)]

    hidden_s = rank_view.hidden_time_s(writes, training=(1, 10), blocked=[(2, 3)])

    # Inside the loop: 1-4 and 9-10 (4 s), less the blocked 2-3.
    assert hidden_s == pytest.approx(3)
    assert rank_view.hidden_time_s(writes, training=None, blocked=[]) == 0


# ---- Darshan records --------------------------------------------------------------------------

def test_records_keep_absolute_times():
    log = sorted((DATA / "dcp" / "logs").iterdir())[1]
    contents = darshan_logs.read_log(log)

    records = rank_view.checkpoint_records(contents, checkpoint_root("dcp"))

    assert len(records) > 0
    assert (records["OPEN_START_unix_s"].dropna() >= contents.start_s).all()
    assert (records["CLOSE_END_unix_s"].dropna() <= contents.end_s).all()
    assert set(records["checkpoint"]) == {"step_0", "step_1", "step_2"}


def test_setup_bias_is_first_timestamp():
    log = sorted((DATA / "dcp" / "logs").iterdir())[1]
    contents = darshan_logs.read_log(log)

    bias_s = rank_view.setup_bias_max_s(contents)

    assert 0 < bias_s < 0.1
    opens = contents.records["F_OPEN_START_TIMESTAMP"]
    assert bias_s == pytest.approx(opens[opens > 0].min())


def test_dxt_segments_match_posix_counters():
    log = sorted((DATA / "dcp_dxt" / "logs").iterdir())[1]
    contents = darshan_logs.read_log(log)
    records = rank_view.checkpoint_records(contents, checkpoint_root("dcp_dxt"))
    posix = records[(records["module"] == "POSIX") & (records["BYTES_WRITTEN"] > 0)].set_index("file")

    segments = rank_view.read_dxt_writes(log, checkpoint_root("dcp_dxt"))
    by_file = segments.groupby("file")

    assert set(by_file.groups) == set(posix.index)
    for file, own in by_file:
        assert len(own) == posix.loc[file, "WRITES"], file
        assert own["length_bytes"].sum() == posix.loc[file, "BYTES_WRITTEN"], file
        assert own["start_unix_s"].min() == pytest.approx(posix.loc[file, "WRITE_START_unix_s"], abs=1e-6), file
        assert own["end_unix_s"].max() == pytest.approx(posix.loc[file, "WRITE_END_unix_s"], abs=1e-6), file


def test_fsync_estimates_agree_with_dxt():
    log = sorted((DATA / "dcp_dxt" / "logs").iterdir())[1]
    contents = darshan_logs.read_log(log)
    records = rank_view.checkpoint_records(contents, checkpoint_root("dcp_dxt"))

    from_dxt_s = rank_view.fsync_time_s(records, rank_view.read_dxt_writes(log, checkpoint_root("dcp_dxt"))).sum()
    from_gap_s = rank_view.fsync_time_s(records, None).sum()

    assert from_dxt_s > 0
    assert from_gap_s == pytest.approx(from_dxt_s, rel=0.1)
    assert from_dxt_s < records["F_WRITE_TIME"].sum()


def test_no_fsync_without_fsync_calls():
    view = plain_view("torch_save")

    assert view.per_rank["checkpoint_fsync_time_s"].sum() == 0
    assert view.summary["fsync_share"] == 0


# ---- per rank ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("job", ["torch_save", "dcp_async_process", "dcp_dxt"])
def test_per_rank_matches_metrics(job):
    view = plain_view(job)
    expected = {row["rank"]: row for row in metrics_for(job)["per_rank"]}

    assert sorted(view.per_rank["rank"]) == sorted(expected)
    for row in view.per_rank.itertuples():
        assert row.checkpoint_bytes_written == expected[row.rank]["checkpoint_bytes_written"], f"rank {row.rank}"
        assert row.checkpoint_write_time_s == pytest.approx(expected[row.rank]["checkpoint_write_time_s"]), f"rank {row.rank}"
        assert row.checkpoint_files_opened == expected[row.rank]["checkpoint_files_opened"], f"rank {row.rank}"


def test_torch_save_rank_zero_writes_all():
    per_rank = plain_view("torch_save").per_rank.set_index("rank")

    assert per_rank.loc[0, "checkpoint_bytes_share"] == 1.0
    assert per_rank.loc[1, "checkpoint_bytes_written"] == 0
    assert per_rank.loc[1, "write_busy_s"] == 0


def test_writer_intervals_count_for_its_rank():
    view = plain_view("dcp_async_process")
    writes = view.intervals[view.intervals["kind"] == "write"]

    assert set(writes["role"]) == {"checkpoint_writer"}
    assert set(writes["rank"]) == {0, 1}
    assert (view.per_rank["write_busy_s"] > 0).all()


def test_small_writes_counted_from_size_bins():
    view = plain_view("dcp")
    metrics = metrics_for("dcp")["checkpoint"]

    small = view.per_rank["checkpoint_small_writes"].sum()
    posix_writes = view.per_rank["checkpoint_posix_writes"].sum()

    assert small / posix_writes == pytest.approx(metrics["small_write_share"])
    assert view.write_sizes["writes"].sum() == posix_writes


def test_per_checkpoint_counts_files_and_opens():
    table = plain_view("torch_save").per_checkpoint

    assert list(table["files"]) == [1, 1, 1]
    assert (table["opens"] > 100).all()
    assert table["bytes_written"].sum() == sum(size for size, _ in checkpoint_files("torch_save"))


# ---- phases and the hidden share -----------------------------------------------------------------------------

def test_synchronous_phases_start_at_call():
    record = {"rank": 0, "train_step_s": [1.0, 1.0],
              "checkpoints": [{"step": 1, "start_utc": "2026-01-01T00:00:10Z", "end_utc": "2026-01-01T00:00:12Z",
                               "blocking_s": 2.0}]}

    phases = rank_view.rank_phases(record, asynchronous=False).set_index("kind")
    start_s = rank_view.parse_utc("2026-01-01T00:00:10Z")

    assert phases.loc["blocked", "start_unix_s"] == pytest.approx(start_s)
    assert phases.loc["blocked", "end_unix_s"] == pytest.approx(start_s + 2)
    assert phases.loc["train_loop", "start_unix_s"] == pytest.approx(start_s - 1)
    assert phases.loc["train_loop", "end_unix_s"] == pytest.approx(start_s + 3)
    assert "final_wait" not in phases.index


def test_asynchronous_phases_block_before_call():
    record = {"rank": 1, "train_step_s": [1.0],
              "checkpoints": [{"step": 1, "start_utc": "2026-01-01T00:00:10Z", "end_utc": "2026-01-01T00:00:15Z",
                               "blocking_s": 0.5}]}

    phases = rank_view.rank_phases(record, asynchronous=True).set_index("kind")
    start_s = rank_view.parse_utc("2026-01-01T00:00:10Z")

    assert phases.loc["blocked", "start_unix_s"] == pytest.approx(start_s - 0.5)
    assert phases.loc["in_flight", "end_unix_s"] == pytest.approx(start_s + 5)
    assert phases.loc["final_wait", "start_unix_s"] == pytest.approx(start_s)
    assert phases.loc["final_wait", "end_unix_s"] == pytest.approx(start_s + 5)


def test_synchronous_saves_hide_nothing():
    records = rank_records_around("dcp", asynchronous=False, margin_s=0.05)

    view = view_for("dcp", rank_records=records)

    assert view.summary["phase_source"] == "rank records"
    assert view.summary["hidden_share"] == 0
    assert view.summary["hidden_share_max"] == 0


def test_asynchronous_saves_hide_io_during_training():
    records = rank_records_around("dcp_async_process", asynchronous=True, margin_s=0.05)

    view = view_for("dcp_async_process", rank_records=records)

    assert view.summary["hidden_share"] == pytest.approx(1.0)
    assert view.summary["hidden_share_min"] == pytest.approx(1.0)
    assert view.per_rank["blocked_s"].tolist() == pytest.approx([3 * 0.001, 3 * 0.001], abs=1e-5)


def test_manifest_without_times_gives_no_phases():
    view = view_for("dcp", manifest=manifest_for("dcp", DATA / "dcp" / "logs"))

    assert view.summary["phase_source"] == "none"
    assert view.summary["hidden_share"] is None
    assert view.per_rank["hidden_share"].isna().all()


def test_manifest_times_give_phases_for_every_rank():
    manifest = manifest_for("dcp", DATA / "dcp" / "logs")
    first_open_s = plain_view("dcp").per_checkpoint["first_open_unix_s"].min()
    for checkpoint in manifest["checkpoints"]:
        checkpoint.update(start_utc=utc(first_open_s), end_utc=utc(first_open_s + 1))

    phases, source = rank_view.job_phases({}, manifest, asynchronous=False)

    assert source == "manifest"
    assert sorted(phases["rank"].unique()) == [0, 1]
    blocked = phases[phases["kind"] == "blocked"]
    assert (blocked["end_unix_s"] - blocked["start_unix_s"]).tolist() == pytest.approx([0.1] * 6)


def test_rank_records_skip_progress_files(tmp_path):
    record = {"rank": 1, "checkpoints": [], "train_step_s": [0.5]}
    (tmp_path / "rank1.json").write_text(json.dumps(record))
    (tmp_path / "rank1.progress.json").write_text(json.dumps({"rank": 1, "phase": "finished"}))

    records = rank_view.read_rank_records(tmp_path)

    assert records == {1: record}


def test_batched_reading_keeps_every_log(monkeypatch):
    paths = sorted((DATA / "dcp_async_process" / "logs").iterdir())
    whole = rank_view.read_checkpoint_io(paths, checkpoint_root("dcp_async_process"))
    monkeypatch.setattr(rank_view, "READ_BATCH_LOGS", 2)

    batched = rank_view.read_checkpoint_io(paths, checkpoint_root("dcp_async_process"))

    assert sorted(batched) == sorted(whole) == paths
    for path in paths:
        assert batched[path].records.equals(whole[path].records), path.name
        assert batched[path].setup_bias_max_s == whole[path].setup_bias_max_s, path.name


# ---- problems and the command line ----------------------------------------------------------------------------

def test_partial_log_listed():
    problems = plain_view("partial_default_limit").summary["log_problems"]

    assert len(problems) == 1
    assert problems[0]["problem"] == "partial"
    assert "POSIX" in problems[0]["detail"]


def test_process_without_log_listed():
    manifest = manifest_for("dcp", DATA / "dcp" / "logs")
    manifest["processes"].append({"pid": 99999, "role": "checkpoint_writer", "rank": 1})

    problems = view_for("dcp", manifest=manifest).summary["log_problems"]

    assert [(p["problem"], p["pid"], p["rank"]) for p in problems] == [("missing", 99999, 1)]


def test_complete_job_has_no_problems():
    assert plain_view("dcp").summary["log_problems"] == []


def test_cli_writes_every_table(tmp_path):
    processes, info = located("dcp_dxt")
    processes.to_csv(tmp_path / "processes.csv", index=False)
    (tmp_path / "info.json").write_text(json.dumps(info))
    manifest = tmp_path / "train" / "manifest.json"
    manifest.parent.mkdir()
    manifest.write_text(json.dumps(manifest_for("dcp_dxt", DATA / "dcp_dxt" / "logs")))

    status = rank_view.main(["--mode", "dcp", "--processes", str(tmp_path / "processes.csv"),
                             "--info", str(tmp_path / "info.json"), "--logs-dir", str(DATA / "dcp_dxt" / "logs"),
                             "--manifest", str(manifest), "--output-dir", str(tmp_path / "ranks")])

    assert status == 0
    summary = json.loads((tmp_path / "ranks" / "rank_view.json").read_text())
    assert set(summary["write_interval_source"].values()) == {"DXT_POSIX"}
    for name in ("per_rank", "intervals", "phases", "per_checkpoint", "write_sizes"):
        assert (tmp_path / "ranks" / f"{name}.csv").is_file(), name
    intervals = pd.read_csv(tmp_path / "ranks" / "intervals.csv")
    assert (intervals[intervals["kind"] == "write"]["source"] == "DXT_POSIX").all()
