"""Per-rank view of one mode's checkpoint I/O: bytes and time per rank, and when each rank did it.

Darshan's POSIX and STDIO records keep, per file and process, the first and last
time of its opens, writes and closes (``POSIX_F_OPEN_START_TIMESTAMP`` ...
``POSIX_F_CLOSE_END_TIMESTAMP``, seconds since the log's job start). DXT_POSIX,
when enabled, keeps every write with its own start and end. Adding each log's
absolute start time (``start_time_sec`` + ``start_time_nsec``) puts the intervals
of all the job's logs on one clock, the clock the training job uses to time its
saves (``start_utc`` in each rank's record).

Against that clock the view measures how much checkpoint I/O is hidden behind
training: the share of a rank's checkpoint write time (the rank's own writes and
those of its background checkpoint writer) that lies inside the training loop but
outside the intervals where the loop was blocked by a save. Darshan's absolute
times can be late by its own setup time (see setup_bias_max_s), so the share is
also given as the lowest and highest value over that uncertainty.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import re
import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from darshan_logs import LogContents, LogReadError, read_logs, under_directory
from darshan_metrics import MIB, WRITE_SIZE_BINS

log = logging.getLogger("rank_view")

# Modes whose save returns before the checkpoint is written (train_checkpoint.py).
ASYNC_MODES = ("dcp_async", "dcp_async_process")
INTERVAL_COLUMNS = ["log", "pid", "role", "rank", "module", "file", "checkpoint", "kind",
                    "start_unix_s", "end_unix_s", "source"]
PHASE_COLUMNS = ["rank", "step", "kind", "start_unix_s", "end_unix_s"]
PER_RANK_COLUMNS = ["rank", "processes", "checkpoint_bytes_written", "checkpoint_files_opened",
                    "checkpoint_write_time_s", "checkpoint_fsync_time_s", "checkpoint_meta_time_s",
                    "checkpoint_posix_writes", "checkpoint_small_writes", "checkpoint_io_time_s",
                    "write_busy_s", "blocked_s", "hidden_s", "hidden_s_min", "hidden_s_max",
                    "hidden_share", "hidden_share_min", "hidden_share_max", "checkpoint_bytes_share"]
# Kinds of phase during which a rank's training loop does not run because of a save.
BLOCKING_PHASES = ("blocked", "final_wait")
# Fractions of each log's largest clock bias tried when bounding the hidden write time.
CLOCK_FRACTIONS = [step / 8 for step in range(9)]
# Logs read by one pool of darshan_logs.read_logs before their other records are dropped.
READ_BATCH_LOGS = 128
# Name of a rank's record in the training job's ranks/ directory (train_checkpoint.py).
RANK_RECORD = re.compile(r"rank\d+\.json")


# ---- intervals on one clock ----------------------------------------------------

def interval_union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Merge overlapping intervals into a sorted list of disjoint ones."""
    merged: list[tuple[float, float]] = []
    for start, end in sorted((s, e) for s, e in intervals if e > s):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def union_length_s(intervals: list[tuple[float, float]]) -> float:
    """Return the time covered by the intervals, counting overlaps once."""
    return sum(end - start for start, end in interval_union(intervals))


def overlap_length_s(intervals: list[tuple[float, float]], others: list[tuple[float, float]]) -> float:
    """Return the time covered by both sets of intervals, in one pass over both sorted unions."""
    first, second = interval_union(intervals), interval_union(others)
    total = 0.0
    i = j = 0
    while i < len(first) and j < len(second):
        total += max(0.0, min(first[i][1], second[j][1]) - max(first[i][0], second[j][0]))
        if first[i][1] < second[j][1]:
            i += 1
        else:
            j += 1
    return total


def hidden_time_s(writes: list[tuple[float, float]], training: tuple[float, float] | None,
                  blocked: list[tuple[float, float]]) -> float:
    """Return the write time that lies inside the training loop but outside the blocked intervals."""
    if training is None:
        return 0.0
    inside = [(max(start, training[0]), min(end, training[1])) for start, end in writes]
    return overlap_length_s(inside, [training]) - overlap_length_s(inside, blocked)


# ---- Darshan records -------------------------------------------------------------

def checkpoint_name(files: pd.Series, checkpoint_dir: str) -> pd.Series:
    """Return the checkpoint each file belongs to: its first path component below the checkpoint directory."""
    prefix = len(checkpoint_dir.rstrip("/")) + 1
    return files.str.slice(prefix).str.split("/").str[0]


def checkpoint_records(contents: LogContents, checkpoint_dir: str | None) -> pd.DataFrame:
    """Return the log's records of files under the checkpoint directory, with absolute times.

    ``F_CLOSE_START_TIMESTAMP`` comes from the full POSIX table, because the
    gap between the last write and the start of the close is where a save's
    fsync runs.
    """
    records = contents.records[under_directory(contents.records["file"], checkpoint_dir)].copy()
    records["checkpoint"] = checkpoint_name(records["file"], checkpoint_dir or "")
    close_start = pd.Series(dtype=float)
    if contents.posix is not None and len(records):
        posix = contents.posix
        close_start = pd.Series(posix["fcounters"]["POSIX_F_CLOSE_START_TIMESTAMP"].values,
                                index=posix["counters"]["id"].astype("uint64").values)
    posix_rows = records["module"] == "POSIX"
    records["F_CLOSE_START_TIMESTAMP"] = records["id"].map(close_start).where(posix_rows)
    for column in [c for c in records.columns if c.endswith("_TIMESTAMP")]:
        # Darshan leaves a timestamp at 0 when the operation never happened.
        records[column.replace("F_", "", 1).replace("_TIMESTAMP", "_unix_s")] = (
            records[column].where(records[column] > 0) + contents.start_s
        )
    return records


def setup_bias_max_s(contents: LogContents) -> float:
    """Return the most that the log's absolute times can be late: its first recorded timestamp.

    darshan-runtime 3.5 (lib/darshan-core.c) counts timestamps from the start of
    its initialisation but reads the job's start time after allocating its
    record memory (MODMEM, NAMEMEM), so start time plus timestamp is late by
    that setup time. Nothing is recorded before the setup ends, so the first
    timestamp bounds it.
    """
    columns = [column for column in contents.records.columns if column.endswith("_TIMESTAMP")]
    stamps = contents.records[columns].to_numpy(dtype=float, na_value=0.0).ravel()
    positive = stamps[stamps > 0]
    return float(positive.min()) if len(positive) else 0.0


@dataclass
class LogCheckpointIO:
    """The part of one log that the view keeps: its checkpoint file records and what places them on the clock."""

    records: pd.DataFrame
    start_s: float
    setup_bias_max_s: float
    partial_modules: list[str]
    has_dxt: bool


def read_checkpoint_io(paths: list[Path], checkpoint_dir: str | None) -> dict[Path, LogCheckpointIO | LogReadError]:
    """Read logs with darshan_logs.read_logs in batches, keeping only their checkpoint records.

    read_logs returns all records of every log it reads, about 6 MB per process
    of a torch job, most of them files Python opened while importing. Reading
    READ_BATCH_LOGS logs at a time and keeping only the checkpoint files bounds
    the memory at any number of logs.
    """
    results: dict[Path, LogCheckpointIO | LogReadError] = {}
    for first in range(0, len(paths), READ_BATCH_LOGS):
        for path, contents in read_logs(paths[first:first + READ_BATCH_LOGS]).items():
            if isinstance(contents, LogReadError):
                results[path] = contents
                continue
            results[path] = LogCheckpointIO(records=checkpoint_records(contents, checkpoint_dir),
                                            start_s=contents.start_s, setup_bias_max_s=setup_bias_max_s(contents),
                                            partial_modules=contents.partial_modules, has_dxt=contents.has_dxt)
    return results


def timestamp_intervals(records: pd.DataFrame) -> pd.DataFrame:
    """Turn per-file timestamps into open-to-close, write and read intervals."""
    frames = []
    for kind, start, end, count in (("open_close", "OPEN_START_unix_s", "CLOSE_END_unix_s", "OPENS"),
                                    ("write", "WRITE_START_unix_s", "WRITE_END_unix_s", "WRITES"),
                                    ("read", "READ_START_unix_s", "READ_END_unix_s", "READS")):
        rows = records[(records[count].fillna(0) > 0) & records[start].notna() & records[end].notna()]
        frames.append(pd.DataFrame({"module": rows["module"], "file": rows["file"], "checkpoint": rows["checkpoint"],
                                    "kind": kind, "start_unix_s": rows[start], "end_unix_s": rows[end],
                                    "source": "POSIX_F_TIMESTAMP" if kind != "open_close" else "F_OPEN/F_CLOSE"}))
    return pd.concat(frames, ignore_index=True)


def fsync_time_s(records: pd.DataFrame, dxt_writes: pd.DataFrame | None) -> pd.Series:
    """Estimate each file's fsync time, which Darshan adds to F_WRITE_TIME.

    darshan-runtime 3.5 (lib/darshan-posix.c) adds the time of fsync and
    fdatasync to ``POSIX_F_WRITE_TIME``, next to the write calls. DXT_POSIX
    records every write call, so with DXT the fsync time is F_WRITE_TIME less
    the time of the writes. Without DXT it is estimated as the time between the
    last write and the start of the close, at most F_WRITE_TIME: the fsync runs
    there in torch.save with an explicit fsync and in DCP's FileSystemWriter.
    """
    syncs = records.get("FSYNCS", 0) + records.get("FDSYNCS", 0)
    syncs = pd.Series(syncs, index=records.index).fillna(0)
    write_time_s = records["F_WRITE_TIME"].fillna(0)
    if dxt_writes is not None:
        calls_s = (dxt_writes["end_unix_s"] - dxt_writes["start_unix_s"]).groupby(dxt_writes["file"]).sum()
        estimate = (write_time_s - records["file"].map(calls_s).fillna(0)).clip(lower=0)
    else:
        gap_s = (records["CLOSE_START_unix_s"] - records["WRITE_END_unix_s"]).fillna(0).clip(lower=0)
        estimate = gap_s.clip(upper=write_time_s)
    return estimate.where(syncs > 0, 0.0)


# ---- DXT -------------------------------------------------------------------------

def read_dxt_writes(path: Path, checkpoint_dir: str) -> pd.DataFrame:
    """Read the DXT_POSIX write segments of the files under the checkpoint directory.

    Only the names under the checkpoint directory are read, so the thousands of
    records of files Python opens while importing torch are never converted.
    Segment times are seconds since the log's job start, as the POSIX timestamps.
    """
    import darshan

    report = darshan.DarshanReport(str(path), read_all=False)
    pattern = "^" + re.escape(checkpoint_dir.rstrip("/") + "/")
    report.mod_read_all_dxt_records("DXT_POSIX", reads=False, filter_patterns=[pattern], filter_mode="include")
    start_s = report.metadata["job"]["start_time_sec"] + report.metadata["job"].get("start_time_nsec", 0) / 1e9
    frames = []
    for record in report.records["DXT_POSIX"].to_df():
        segments = record["write_segments"]
        if len(segments):
            frames.append(pd.DataFrame({"file": report.name_records[record["id"]],
                                        "start_unix_s": segments["start_time"] + start_s,
                                        "end_unix_s": segments["end_time"] + start_s,
                                        "length_bytes": segments["length"]}))
    if not frames:
        return pd.DataFrame(columns=["file", "start_unix_s", "end_unix_s", "length_bytes"])
    return pd.concat(frames, ignore_index=True)


def _dxt_or_error(path: Path, checkpoint_dir: str) -> pd.DataFrame | str:
    try:
        return read_dxt_writes(path, checkpoint_dir)
    except Exception as error:  # PyDarshan raises RuntimeError, ValueError, KeyError or OSError for damaged records.
        return f"{path}: DXT_POSIX cannot be read by PyDarshan ({type(error).__name__}: {error})"


def read_dxt_logs(paths: list[Path], checkpoint_dir: str, workers: int | None = None) -> dict[Path, pd.DataFrame | str]:
    """Read the DXT write segments of many logs in worker processes.

    Each log was read by darshan_logs.read_logs first, so its POSIX records are
    known to be readable. A log whose DXT section still fails or crashes its
    worker gets an error message, and its timeline falls back to the POSIX
    timestamps.
    """
    results: dict[Path, pd.DataFrame | str] = {}
    if not paths:
        return results
    try:
        with ProcessPoolExecutor(max_workers=workers or min(len(paths), 4)) as pool:
            for path, result in zip(paths, pool.map(_dxt_or_error, paths, [checkpoint_dir] * len(paths))):
                results[path] = result
    except BrokenProcessPool:
        for path in paths:
            results.setdefault(path, f"{path}: PyDarshan crashed while reading DXT_POSIX")
    return results


# ---- the training job's timing -----------------------------------------------------

def parse_utc(text: str) -> float:
    """Return seconds since the epoch of an ISO 8601 UTC time such as 2026-12-04T20:39:26.966076Z."""
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def rank_phases(record: dict, asynchronous: bool) -> pd.DataFrame:
    """Return one rank's training loop and the intervals where a save blocked it.

    train_checkpoint.py records per save ``start_utc`` (the call of the save),
    ``end_utc`` (the checkpoint is complete) and ``blocking_s`` (how long the
    training loop waited). A synchronous save blocks from its start for
    blocking_s. An asynchronous save takes start_utc after waiting for the
    previous save, so its blocking_s (that wait plus staging) is placed before
    start_utc, and after the loop the rank waits for the last save until its end_utc.
    """
    checkpoints = [c for c in record.get("checkpoints", []) if c.get("start_utc")]
    rows = []
    if not checkpoints:
        return pd.DataFrame(rows, columns=PHASE_COLUMNS)

    rank = int(record["rank"])
    step_s = list(record.get("train_step_s") or [])
    returns_s = []
    for checkpoint in checkpoints:
        start_s, end_s = parse_utc(checkpoint["start_utc"]), parse_utc(checkpoint["end_utc"])
        blocking_s = float(checkpoint["blocking_s"])
        # NOTE: an asynchronous save's staging is placed before start_utc, with the wait. No checkpoint
        # file is written during staging, so this can count hidden write time as blocked, never the reverse.
        blocked = (start_s - blocking_s, start_s) if asynchronous else (start_s, start_s + blocking_s)
        rows.append((rank, checkpoint["step"], "blocked", *blocked))
        if asynchronous:
            rows.append((rank, checkpoint["step"], "in_flight", start_s, end_s))
        returns_s.append(blocked[1])

    first, last = checkpoints[0], checkpoints[-1]
    first_blocked_s = returns_s[0] - float(first["blocking_s"])
    loop_start_s = first_blocked_s - sum(step_s[:int(first["step"])])
    loop_end_s = returns_s[-1] + sum(step_s[int(last["step"]):])
    rows.append((rank, None, "train_loop", loop_start_s, loop_end_s))
    if asynchronous and parse_utc(last["end_utc"]) > loop_end_s:
        rows.append((rank, last["step"], "final_wait", loop_end_s, parse_utc(last["end_utc"])))
    return pd.DataFrame(rows, columns=PHASE_COLUMNS)


def manifest_rank_records(manifest: dict) -> dict[int, dict]:
    """Build per-rank records from a manifest when the ranks' own records are missing.

    The manifest keeps one start_utc and end_utc per checkpoint (the earliest
    start and latest end over the ranks) and each rank's blocking_s, in rank
    order, so the phases it gives are shared by all ranks and less exact.
    """
    ranks = sorted(int(p["rank"]) for p in manifest.get("processes", []) if p.get("role") == "rank")
    records: dict[int, dict] = {}
    for index, rank in enumerate(ranks):
        checkpoints = []
        for checkpoint in manifest.get("checkpoints", []):
            if not checkpoint.get("start_utc"):
                continue
            checkpoints.append({"step": checkpoint["step"], "start_utc": checkpoint["start_utc"],
                                "end_utc": checkpoint["end_utc"], "blocking_s": checkpoint["blocking_s"][index]})
        records[rank] = {"rank": rank, "checkpoints": checkpoints, "train_step_s": []}
    return records


def read_rank_records(ranks_dir: Path | None) -> dict[int, dict]:
    """Read ``rank<k>.json`` of every rank in the training job's output directory.

    Other files there, such as the ranks' ``rank<k>.progress.json``, are not records.
    """
    if ranks_dir is None or not ranks_dir.is_dir():
        return {}
    records = {}
    for path in sorted(ranks_dir.iterdir()):
        if RANK_RECORD.fullmatch(path.name):
            record = json.loads(path.read_text())
            records[int(record["rank"])] = record
    return records


def job_phases(rank_records: dict[int, dict], manifest: dict | None, asynchronous: bool) -> tuple[pd.DataFrame, str]:
    """Return the phases of every rank and where they came from."""
    source = "rank records"
    if not rank_records and manifest is not None:
        rank_records, source = manifest_rank_records(manifest), "manifest"
    frames = [rank_phases(record, asynchronous) for _, record in sorted(rank_records.items())]
    phases = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=PHASE_COLUMNS)
    if phases.empty:
        source = "none"
    return phases, source


# ---- the view -------------------------------------------------------------------------

@dataclass
class RankView:
    """The tables of one mode's per-rank view, as rank_view.py writes them."""

    per_rank: pd.DataFrame
    intervals: pd.DataFrame
    phases: pd.DataFrame
    per_checkpoint: pd.DataFrame
    write_sizes: pd.DataFrame
    summary: dict


def log_tables(labels: dict, log_io: LogCheckpointIO, checkpoint_dir: str | None,
               dxt: pd.DataFrame | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return one log's checkpoint file records and its I/O intervals, with ``labels`` (log, pid, role, rank) added."""
    records = log_io.records.copy()
    records["fsync_time_s"] = fsync_time_s(records, dxt)
    intervals = timestamp_intervals(records)
    if dxt is not None:
        segments = dxt.assign(module="POSIX", checkpoint=checkpoint_name(dxt["file"], checkpoint_dir or ""),
                              kind="write", source="DXT_POSIX")
        intervals = pd.concat([intervals[intervals["kind"] != "write"], segments[intervals.columns]],
                              ignore_index=True)
    return records.assign(**labels), intervals.assign(**labels)[INTERVAL_COLUMNS]


def rank_timing(writes: pd.DataFrame, phases: pd.DataFrame, bias_max_s: dict[str, float]) -> dict:
    """Measure one rank's checkpoint write time and how much of it training hid.

    ``writes`` and ``phases`` are the rank's own. hidden_s uses Darshan's times
    as logged. Because each log's times can be late by up to its
    setup_bias_max_s, and the hidden time does not change monotonically with
    that shift, hidden_s_min and hidden_s_max bound it over shifts of 0 to the
    whole bias in CLOCK_FRACTIONS steps.
    """
    spans = list(zip(writes["start_unix_s"], writes["end_unix_s"]))
    busy_s = union_length_s(spans)
    blocking = phases[phases["kind"].isin(BLOCKING_PHASES)]
    blocked = list(zip(blocking["start_unix_s"], blocking["end_unix_s"]))
    loop = phases[phases["kind"] == "train_loop"]
    timing = {"write_busy_s": busy_s, "blocked_s": float((blocking["end_unix_s"] - blocking["start_unix_s"]).sum()),
              "hidden_s": None, "hidden_s_min": None, "hidden_s_max": None,
              "hidden_share": None, "hidden_share_min": None, "hidden_share_max": None}
    if len(loop) == 0 or busy_s == 0:
        return timing

    training = (float(loop["start_unix_s"].iloc[0]), float(loop["end_unix_s"].iloc[0]))
    shift_s = writes["log"].map(bias_max_s).fillna(0.0).to_numpy()
    starts, ends = writes["start_unix_s"].to_numpy(), writes["end_unix_s"].to_numpy()
    hidden = [hidden_time_s(list(zip(starts - fraction * shift_s, ends - fraction * shift_s)), training, blocked)
              for fraction in CLOCK_FRACTIONS]
    timing.update(hidden_s=hidden[0], hidden_s_min=min(hidden), hidden_s_max=max(hidden),
                  hidden_share=hidden[0] / busy_s, hidden_share_min=min(hidden) / busy_s,
                  hidden_share_max=max(hidden) / busy_s)
    return timing


def _sum(frame: pd.DataFrame, column: str) -> float:
    return float(frame[column].fillna(0).clip(lower=0).sum()) if column in frame.columns else 0.0


def per_rank_table(files: pd.DataFrame, intervals: pd.DataFrame, phases: pd.DataFrame,
                   processes: pd.DataFrame, bias_max_s: dict[str, float]) -> pd.DataFrame:
    """Sum each rank's checkpoint I/O (its own and its background writers') and time it against training."""
    small_bins = [name for name, upper in WRITE_SIZE_BINS.items() if upper <= MIB]
    files_by_rank = dict(tuple(files.groupby("rank")))
    writes_by_rank = dict(tuple(intervals[intervals["kind"] == "write"].groupby("rank")))
    phases_by_rank = dict(tuple(phases.groupby("rank")))
    processes_by_rank = processes["rank"].dropna().astype(int).value_counts()
    rows = []
    for rank in sorted(processes_by_rank.index):
        own = files_by_rank.get(rank, files.iloc[0:0])
        posix = own[own["module"] == "POSIX"]
        opened = own[own["OPENS"].fillna(0) > 0].groupby("log")["file"].nunique().sum()
        row = {
            "rank": int(rank),
            "processes": int(processes_by_rank[rank]),
            "checkpoint_bytes_written": int(_sum(own, "BYTES_WRITTEN")),
            "checkpoint_files_opened": int(opened),
            "checkpoint_write_time_s": _sum(own, "F_WRITE_TIME"),
            "checkpoint_fsync_time_s": _sum(own, "fsync_time_s"),
            "checkpoint_meta_time_s": _sum(own, "F_META_TIME"),
            "checkpoint_posix_writes": int(sum(_sum(posix, column) for column in WRITE_SIZE_BINS)),
            "checkpoint_small_writes": int(sum(_sum(posix, column) for column in small_bins)),
        }
        row["checkpoint_io_time_s"] = row["checkpoint_write_time_s"] + row["checkpoint_meta_time_s"] + _sum(own, "F_READ_TIME")
        row.update(rank_timing(writes_by_rank.get(rank, intervals.iloc[0:0]), phases_by_rank.get(rank, phases.iloc[0:0]),
                               bias_max_s))
        rows.append(row)
    table = pd.DataFrame(rows, columns=PER_RANK_COLUMNS)
    total = table["checkpoint_bytes_written"].sum()
    table["checkpoint_bytes_share"] = table["checkpoint_bytes_written"] / total if total else 0.0
    return table


def per_checkpoint_table(files: pd.DataFrame) -> pd.DataFrame:
    """Sum the I/O of each checkpoint (step directory or file) over every process."""
    columns = ["checkpoint", "files", "writing_ranks", "opens", "stats", "renames", "metadata_ops",
               "bytes_written", "bytes_read", "write_time_s", "fsync_time_s", "read_time_s", "meta_time_s",
               "first_open_unix_s", "last_close_unix_s"]
    rows = []
    for checkpoint, own in files.groupby("checkpoint"):
        opened = own[own["OPENS"].fillna(0) > 0]
        writing = own[own["BYTES_WRITTEN"].fillna(0) > 0]
        row = {
            "checkpoint": checkpoint,
            "files": int(opened["file"].nunique()),
            "writing_ranks": int(writing["rank"].dropna().nunique()),
            "opens": int(_sum(own, "OPENS")),
            "stats": int(_sum(own, "STATS")),
            "renames": int(_sum(own, "RENAME_SOURCES")),
            "bytes_written": int(_sum(own, "BYTES_WRITTEN")),
            "bytes_read": int(_sum(own, "BYTES_READ")),
            "write_time_s": _sum(own, "F_WRITE_TIME"),
            "fsync_time_s": _sum(own, "fsync_time_s"),
            "read_time_s": _sum(own, "F_READ_TIME"),
            "meta_time_s": _sum(own, "F_META_TIME"),
            "first_open_unix_s": own["OPEN_START_unix_s"].min(),
            "last_close_unix_s": own["CLOSE_END_unix_s"].max(),
        }
        row["metadata_ops"] = row["opens"] + row["stats"] + row["renames"]
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def write_size_table(files: pd.DataFrame) -> pd.DataFrame:
    """Count each rank's checkpoint writes per POSIX_SIZE_WRITE_* bin."""
    posix = files[(files["module"] == "POSIX") & files["rank"].notna()]
    rows = [{"rank": int(rank), "bin": f"POSIX_{column}", "upper_bytes": upper, "writes": int(_sum(own, column))}
            for rank, own in posix.groupby(posix["rank"].astype(int)) for column, upper in WRITE_SIZE_BINS.items()]
    return pd.DataFrame(rows, columns=["rank", "bin", "upper_bytes", "writes"])


def log_problems(processes: pd.DataFrame, logs: dict[str, LogCheckpointIO], errors: dict[str, str],
                 manifest: dict | None) -> list[dict]:
    """List the logs that are partial, unfinished or unreadable, and the job's processes with no log."""
    problems = []
    for row in processes.itertuples():
        base = {"log": row.log, "pid": None if pd.isna(row.pid) else int(row.pid), "role": row.role,
                "rank": None if pd.isna(row.rank) else int(row.rank)}
        error = row.error or errors.get(row.log)
        if error:
            problems.append({**base, "problem": "unreadable", "detail": error})
        elif row.log in logs and logs[row.log].partial_modules:
            modules = ",".join(logs[row.log].partial_modules)
            problems.append({**base, "problem": "partial", "detail": f"module {modules} ran out of records"})
    logged = set(processes["pid"].astype(int))
    for process in (manifest or {}).get("processes", []):
        if int(process["pid"]) not in logged:
            problems.append({"log": None, "pid": int(process["pid"]), "role": process.get("role"),
                             "rank": process.get("rank"), "problem": "missing", "detail": "no Darshan log found"})
    return problems


def summarise(mode: str, checkpoint_dir: str | None, origin_s: float, per_rank: pd.DataFrame,
              phase_source: str, sources: dict[str, str], bias_max_s: dict[str, float], problems: list[dict]) -> dict:
    """Collect the mode-level figures of the view."""
    timed = per_rank[per_rank["hidden_s"].notna()] if len(per_rank) else per_rank
    busy_s = float(timed["write_busy_s"].sum()) if len(timed) else 0.0

    def share(column: str) -> float | None:
        return float(timed[column].sum()) / busy_s if busy_s > 0 else None

    write_time_s = float(per_rank["checkpoint_write_time_s"].sum()) if len(per_rank) else 0.0
    return {
        "mode": mode,
        "checkpoint_dir": checkpoint_dir,
        "origin_unix_s": origin_s,
        "origin_utc": dt.datetime.fromtimestamp(origin_s, tz=dt.timezone.utc).isoformat().replace("+00:00", "Z"),
        "phase_source": phase_source,
        "write_interval_source": sources,
        "hidden_share": share("hidden_s"),
        "hidden_share_min": share("hidden_s_min"),
        "hidden_share_max": share("hidden_s_max"),
        "darshan_setup_bias_max_s": bias_max_s,
        "fsync_share": float(per_rank["checkpoint_fsync_time_s"].sum()) / write_time_s if write_time_s > 0 else None,
        "fsync_estimated_from": "F_WRITE_TIME less the DXT_POSIX write calls"
                                if sources and all(source == "DXT_POSIX" for source in sources.values())
                                else "the time between the last write and the start of the close",
        "log_problems": problems,
        "per_rank": per_rank.to_dict(orient="records"),
    }


def collect_io(processes: pd.DataFrame, logs_dir: Path, checkpoint_dir: str | None
               ) -> tuple[dict[str, LogCheckpointIO], dict[str, str], pd.DataFrame, pd.DataFrame, dict[str, str]]:
    """Read the job's logs and turn them into tables.

    Returns what is kept of each readable log, the reason each other log could
    not be read, the checkpoint file records, the I/O intervals and where each
    log's write times come from (DXT_POSIX or the POSIX timestamps).
    """
    readable = processes[processes["error"] == ""]
    loaded = read_checkpoint_io([logs_dir / name for name in readable["log"]], checkpoint_dir)
    logs = {path.name: result for path, result in loaded.items() if not isinstance(result, LogReadError)}
    errors = {path.name: result.reason for path, result in loaded.items() if isinstance(result, LogReadError)}
    for name, reason in errors.items():
        log.error("%s left out of the per-rank view: %s", name, reason)

    # A partial DXT module lacks some writes, which would count as fsync time; such logs use the POSIX timestamps.
    dxt_paths = [logs_dir / name for name, log_io in logs.items()
                 if log_io.has_dxt and "DXT_POSIX" not in log_io.partial_modules and checkpoint_dir]
    dxt = read_dxt_logs(dxt_paths, checkpoint_dir) if dxt_paths else {}
    files, intervals, sources = [], [], {}
    for row in processes[processes["log"].isin(list(logs))].itertuples():
        segments = dxt.get(logs_dir / row.log)
        if isinstance(segments, str):
            log.warning("%s; using the POSIX timestamps of its writes instead", segments)
            segments = None
        labels = {"log": row.log, "pid": row.pid, "role": row.role, "rank": row.rank}
        log_files, log_intervals = log_tables(labels, logs[row.log], checkpoint_dir, segments)
        files.append(log_files)
        intervals.append(log_intervals)
        if (log_intervals["kind"] == "write").any():
            sources[row.log] = "DXT_POSIX" if segments is not None else "POSIX_F_TIMESTAMP"
    files = pd.concat(files, ignore_index=True) if files else pd.DataFrame(
        columns=["log", "rank", "module", "file", "checkpoint", "OPENS", "BYTES_WRITTEN"])
    intervals = pd.concat(intervals, ignore_index=True) if intervals else pd.DataFrame(columns=INTERVAL_COLUMNS)
    return logs, errors, files, intervals, sources


def compute(mode: str, processes: pd.DataFrame, logs_dir: Path, info: dict, manifest: dict | None,
            rank_records: dict[int, dict]) -> RankView:
    """Build the per-rank view of one mode from its logs, its manifest and the ranks' records."""
    checkpoint_dir = info.get("checkpoint_dir")
    logs, errors, files, intervals, sources = collect_io(processes, logs_dir, checkpoint_dir)

    phases, phase_source = job_phases(rank_records, manifest, mode in ASYNC_MODES)
    bias_max_s = {name: log_io.setup_bias_max_s for name, log_io in logs.items()}
    per_rank = per_rank_table(files, intervals, phases, processes[processes["log"].isin(list(logs))], bias_max_s)

    starts = [log_io.start_s for log_io in logs.values()] + ([parse_utc(manifest["start_utc"])] if manifest else [])
    origin_s = min(starts) if starts else 0.0
    summary = summarise(mode, checkpoint_dir, origin_s, per_rank, phase_source, sources, bias_max_s,
                        log_problems(processes, logs, errors, manifest))
    return RankView(per_rank, intervals, phases, per_checkpoint_table(files), write_size_table(files), summary)


def write_view(view: RankView, output_dir: Path) -> None:
    """Write the view's tables as CSV and its summary as rank_view.json."""
    output_dir.mkdir(parents=True, exist_ok=True)
    view.per_rank.to_csv(output_dir / "per_rank.csv", index=False)
    view.intervals.to_csv(output_dir / "intervals.csv", index=False)
    view.phases.to_csv(output_dir / "phases.csv", index=False)
    view.per_checkpoint.to_csv(output_dir / "per_checkpoint.csv", index=False)
    view.write_sizes.to_csv(output_dir / "write_sizes.csv", index=False)
    (output_dir / "rank_view.json").write_text(json.dumps(view.summary, indent=1, default=str) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", required=True, help="checkpoint mode")
    parser.add_argument("--processes", type=Path, required=True, help="processes.csv from locate_logs.py")
    parser.add_argument("--info", type=Path, required=True, help="locate.json from locate_logs.py")
    parser.add_argument("--logs-dir", type=Path, required=True, help="directory of the copied logs")
    parser.add_argument("--manifest", type=Path,
                        help="the training job's manifest.json; the ranks' records are read from ranks/ beside it")
    parser.add_argument("--output-dir", type=Path, required=True, help="directory for the view's CSV and JSON files")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    processes = pd.read_csv(args.processes, dtype={"error": str})
    processes["error"] = processes["error"].fillna("")
    info = json.loads(args.info.read_text())
    manifest = json.loads(args.manifest.read_text()) if args.manifest and args.manifest.is_file() else None
    rank_records = read_rank_records(args.manifest.parent / "ranks" if args.manifest else None)

    view = compute(args.mode, processes, args.logs_dir, info, manifest, rank_records)
    write_view(view, args.output_dir)
    hidden = view.summary["hidden_share"]
    low, high = view.summary["hidden_share_min"], view.summary["hidden_share_max"]
    log.info("%s: %d ranks, phases from %s, checkpoint write time hidden behind training: %s", args.mode,
             len(view.per_rank), view.summary["phase_source"],
             "unknown" if hidden is None else f"{hidden:.0%} ({low:.0%} to {high:.0%} within Darshan's clock offset)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
