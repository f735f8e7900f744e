"""Compute the I/O figures of one mode from its Darshan logs with PyDarshan.

Every figure is computed twice: for all files, which includes the thousands of
files Python opens while importing torch, and for the files under the checkpoint
directory alone. I/O time and bandwidth "by slowest rank" come from PyDarshan's
accumulator (``darshan_accumulator_*`` in darshan-util), fed with the POSIX
records of all the job's logs and each log's records labelled with its rank, so
the figures mean what they mean in ``python -m darshan summary`` for an MPI job.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections import Counter
from pathlib import Path

import pandas as pd

from darshan_logs import LogContents, LogReadError, empty_records, read_logs, under_directory

log = logging.getLogger("darshan_metrics")

SCOPES = ("all", "checkpoint")
WRITE_SIZE_BINS = {
    "SIZE_WRITE_0_100": 100, "SIZE_WRITE_100_1K": 1024, "SIZE_WRITE_1K_10K": 10 * 1024,
    "SIZE_WRITE_10K_100K": 100 * 1024, "SIZE_WRITE_100K_1M": 1024**2, "SIZE_WRITE_1M_4M": 4 * 1024**2,
    "SIZE_WRITE_4M_10M": 10 * 1024**2, "SIZE_WRITE_10M_100M": 100 * 1024**2,
    "SIZE_WRITE_100M_1G": 1024**3, "SIZE_WRITE_1G_PLUS": math.inf,
}
MIB = 1024**2


def _sum(records: pd.DataFrame, column: str) -> float:
    if column not in records.columns:
        return 0
    return float(records[column].fillna(0).clip(lower=0).sum())


def common_access_sizes(records: pd.DataFrame, top: int = 4) -> list[list[int]]:
    """Return the most common POSIX access sizes as [size_bytes, count] pairs."""
    posix = records[records["module"] == "POSIX"]
    counts: Counter = Counter()
    for slot in range(1, 5):
        sizes = posix.get(f"ACCESS{slot}_ACCESS")
        numbers = posix.get(f"ACCESS{slot}_COUNT")
        if sizes is None or numbers is None:
            continue
        for size, number in zip(sizes, numbers):
            if number and number > 0:
                counts[int(size)] += int(number)
    return [[size, number] for size, number in counts.most_common(top)]


def file_figures(records: pd.DataFrame) -> dict:
    """Sum the counters of a set of file records (POSIX and STDIO) into named figures."""
    real_files = records[~records["file"].fillna("<").str.startswith("<")]
    opened = real_files[real_files["OPENS"].fillna(0) > 0]["file"].nunique()
    posix = records[records["module"] == "POSIX"]
    write_ops = _sum(records, "WRITES")
    bytes_written = _sum(records, "BYTES_WRITTEN")
    small_writes = sum(_sum(posix, column) for column, upper in WRITE_SIZE_BINS.items() if upper <= MIB)
    all_writes = sum(_sum(posix, column) for column in WRITE_SIZE_BINS)
    return {
        "files_opened": int(opened),
        "files_written": int(real_files[real_files["BYTES_WRITTEN"].fillna(0) > 0]["file"].nunique()),
        "bytes_written": int(bytes_written),
        "bytes_read": int(_sum(records, "BYTES_READ")),
        "write_ops": int(write_ops),
        "read_ops": int(_sum(records, "READS")),
        "opens": int(_sum(records, "OPENS")),
        "fsyncs": int(_sum(posix, "FSYNCS") + _sum(posix, "FDSYNCS")),
        "write_time_s": _sum(records, "F_WRITE_TIME"),
        "read_time_s": _sum(records, "F_READ_TIME"),
        "meta_time_s": _sum(records, "F_META_TIME"),
        "mean_write_size_bytes": bytes_written / write_ops if write_ops else None,
        "small_write_share": small_writes / all_writes if all_writes else None,
        "common_access_sizes": common_access_sizes(records),
    }


def slowest_rank_figures(posix_parts: list[tuple[int, dict]], nprocs: int) -> dict:
    """Run PyDarshan's accumulator over POSIX records labelled with their rank."""
    from darshan.backend.cffi_backend import accumulate_records

    counters = [part["counters"].assign(rank=rank) for rank, part in posix_parts if len(part["counters"])]
    if not counters:
        return {"slowest_rank_io_time_s": 0.0, "slowest_rank_meta_time_s": 0.0, "slowest_rank": None,
                "bandwidth_by_slowest_mib_per_s": None}
    fcounters = [part["fcounters"].assign(rank=rank) for rank, part in posix_parts if len(part["counters"])]
    combined = {"counters": pd.concat(counters, ignore_index=True), "fcounters": pd.concat(fcounters, ignore_index=True)}
    derived = accumulate_records(combined, "POSIX", nprocs).derived_metrics
    time_s = float(derived.agg_time_by_slowest)
    return {
        "slowest_rank_io_time_s": time_s,
        "slowest_rank_meta_time_s": float(derived.unique_md_only_time_by_slowest),
        "slowest_rank": int(derived.unique_io_slowest_rank) if time_s > 0 else None,
        "bandwidth_by_slowest_mib_per_s": float(derived.agg_perf_by_slowest) if time_s > 0 else None,
    }


def posix_subset(contents: LogContents, checkpoint_dir: str | None) -> dict | None:
    """Return the log's POSIX records in PyDarshan's layout, limited to the checkpoint directory."""
    if contents.posix is None:
        return None
    if checkpoint_dir is None:
        return {"counters": contents.posix["counters"].iloc[0:0], "fcounters": contents.posix["fcounters"].iloc[0:0]}
    posix = contents.records[contents.records["module"] == "POSIX"]
    ids = set(posix.loc[under_directory(posix["file"], checkpoint_dir), "id"])
    mask = contents.posix["counters"]["id"].isin(ids)
    return {"counters": contents.posix["counters"][mask], "fcounters": contents.posix["fcounters"][mask]}


def accumulation_ranks(processes: pd.DataFrame) -> tuple[dict[str, int], int]:
    """Label each log with the rank its checkpoint I/O counts for.

    A background checkpoint writer counts for its rank. Processes without a rank
    (launchers, resource trackers) get labels after the last rank, so they can be
    the slowest "rank" of all-files I/O but never merge with a real rank.
    """
    labels: dict[str, int] = {}
    ranks = processes["rank"].dropna().astype(int)
    next_label = int(ranks.max()) + 1 if len(ranks) else 0
    for row in processes.itertuples():
        if pd.notna(row.rank):
            labels[row.log] = int(row.rank)
        else:
            labels[row.log] = next_label
            next_label += 1
    return labels, max(next_label, 1)


def rank_table(processes: pd.DataFrame, contents: dict[str, LogContents], checkpoint_dir: str | None) -> pd.DataFrame:
    """Per rank: checkpoint bytes and write time of the rank and its background writers."""
    rows = []
    for rank, group in processes[processes["rank"].notna()].groupby(processes["rank"].dropna().astype(int)):
        written = write_time = opened = 0.0
        for name in group["log"]:
            if name not in contents:
                continue
            records = contents[name].records
            scoped = records[under_directory(records["file"], checkpoint_dir)]
            written += _sum(scoped, "BYTES_WRITTEN")
            write_time += _sum(scoped, "F_WRITE_TIME")
            opened += scoped[scoped["OPENS"].fillna(0) > 0]["file"].nunique()
        rows.append({"rank": int(rank), "checkpoint_bytes_written": int(written),
                     "checkpoint_write_time_s": write_time, "checkpoint_files_opened": int(opened)})
    return pd.DataFrame(rows, columns=["rank", "checkpoint_bytes_written", "checkpoint_write_time_s", "checkpoint_files_opened"])


def checkpoints_written(records: pd.DataFrame, checkpoint_dir: str | None) -> int:
    """Count the checkpoints written: distinct top-level entries under the checkpoint directory.

    A DCP checkpoint is a directory (step_3/) and a torch.save checkpoint one file
    (step_3.pt); either is the first path component below the checkpoint directory.
    """
    if not checkpoint_dir:
        return 0
    written = records[(records["BYTES_WRITTEN"].fillna(0) > 0) & under_directory(records["file"], checkpoint_dir)]
    prefix = len(checkpoint_dir.rstrip("/")) + 1
    return int(written["file"].str.slice(prefix).str.split("/").str[0].nunique())


def write_bandwidth(bytes_written: int, write_time_s: pd.Series) -> float | None:
    """Return checkpoint bytes written over the longest write time of any rank, in MiB/s.

    PyDarshan's bandwidth by slowest rank counts the restore's reads too. This one
    counts only write calls (with fsync, which Darshan's POSIX module adds to the
    write time), so it compares with the storage baseline's write bandwidth.
    """
    slowest_s = float(write_time_s.max()) if len(write_time_s) else 0.0
    return bytes_written / MIB / slowest_s if bytes_written and slowest_s > 0 else None


def imbalance(values: pd.Series) -> float | None:
    """Return max / mean of per-rank values: 1.0 is balanced, N means one of N ranks did it all."""
    if values.empty or values.mean() == 0:
        return None
    return float(values.max() / values.mean())


def application_figures(manifest: dict | None) -> dict:
    """Summarise the training job's own timing of its checkpoints and of the restore of the last one."""
    if not manifest or not manifest.get("checkpoints"):
        return {}
    checkpoints = manifest["checkpoints"]
    blocking = [c["blocking_max_s"] for c in checkpoints]
    completion = [c.get("completion_max_s", c["blocking_max_s"]) for c in checkpoints]
    sizes = [c["bytes"] for c in checkpoints]
    bytes_by_rank: Counter = Counter()
    for checkpoint in checkpoints:
        for rank, written in (checkpoint.get("bytes_by_rank") or {}).items():
            bytes_by_rank[int(rank)] += int(written)
    mean_size = sum(sizes) / len(sizes)
    mean_blocking = sum(blocking) / len(blocking)
    mean_completion = sum(completion) / len(completion)
    return {
        "checkpoints": len(checkpoints),
        "checkpoint_bytes_on_disk": int(sum(sizes)),
        "checkpoint_size_bytes": mean_size,
        "files_per_checkpoint": sum(c["files"] for c in checkpoints) / len(checkpoints),
        "bytes_on_disk_by_rank": {str(rank): number for rank, number in sorted(bytes_by_rank.items())},
        "blocking_mean_s": mean_blocking,
        "blocking_max_s": max(blocking),
        "completion_mean_s": mean_completion,
        "blocking_throughput_mib_per_s": mean_size / MIB / mean_blocking if mean_blocking > 0 else None,
        "completion_throughput_mib_per_s": mean_size / MIB / mean_completion if mean_completion > 0 else None,
        **restore_figures(manifest),
    }


def restore_figures(manifest: dict) -> dict:
    """Summarise the restore of the last checkpoint: slowest rank's load time, bytes, page cache and integrity.

    Manifests written before the job restored anything give None for each figure.
    """
    restore = manifest.get("restore") or {}
    load_s = restore.get("load_max_s")
    restored = restore.get("bytes")
    page_cache = restore.get("page_cache") or {}
    if not page_cache:
        cache_state = None
    elif page_cache.get("dropped"):
        cache_state = "dropped"
    else:
        cache_state = f"not dropped ({page_cache.get('resident_bytes_after', 0)} bytes stayed resident)"
    return {
        "restore_load_max_s": load_s,
        "restore_bytes": restored,
        "restore_throughput_mib_per_s": restored / MIB / load_s if restored and load_s else None,
        "restore_page_cache": cache_state,
        "integrity": manifest.get("integrity"),
    }


def process_rows(processes: pd.DataFrame, logs_dir: Path, checkpoint_dir: str | None,
                 flags: list[str]) -> tuple[dict[str, LogContents], list[dict]]:
    """Read the usable logs and build one per-process row for every log in processes.csv.

    A log that locate_logs could not use, or that cannot be read now, keeps its
    row with the error and adds a flag, so that the table shows it was left out.
    """
    errors = processes["error"].fillna("") if "error" in processes else pd.Series("", index=processes.index)
    loaded = read_logs([logs_dir / name for name in processes.loc[errors == "", "log"]])
    contents: dict[str, LogContents] = {}
    left_out: dict[str, list[str]] = {}
    rows = []
    for row, error in zip(processes.itertuples(), errors):
        base = {"log": row.log, "pid": row.pid, "role": row.role, "rank": row.rank, "error": error}
        loaded_log = loaded.get(logs_dir / row.log)
        if isinstance(loaded_log, LogReadError):
            base["error"] = loaded_log.reason
        if base["error"]:
            left_out.setdefault(base["error"], []).append(row.log)
            rows.append(base)
            continue
        contents[row.log] = loaded_log
        records = loaded_log.records
        for scope, scoped in (("all", records), ("checkpoint", records[under_directory(records["file"], checkpoint_dir)])):
            figures = file_figures(scoped)
            base.update({f"{scope}_{key}": value for key, value in figures.items() if key != "common_access_sizes"})
        base["partial_modules"] = ",".join(loaded_log.partial_modules)
        flags.extend(log_flags(row.log, loaded_log))
        rows.append(base)
    flags.extend(left_out_flags(left_out))
    return contents, rows


def left_out_flags(left_out: dict[str, list[str]]) -> list[str]:
    """Flag the logs left out, one flag per reason, so that many logs with one problem make one flag."""
    flags = []
    for reason, names in left_out.items():
        what = f"log {names[0]}" if len(names) == 1 else f"{len(names)} logs ({', '.join(names)})"
        flags.append(f"{what} left out: {reason}")
    return flags


def log_flags(name: str, contents: LogContents) -> list[str]:
    """Flag a readable log whose records are incomplete: a partial module, or no POSIX module."""
    flags = []
    if contents.partial_modules:
        flags.append(
            f"partial {','.join(contents.partial_modules)} in {name}: records were dropped; raise MAX_RECORDS "
            "(darshan.max_records) or MODMEM in the Darshan config file"
        )
    if contents.posix is None:
        flags.append(
            f"no POSIX module in {name}: its reads and writes through file descriptors were not traced and it "
            "has no part in the slowest-rank time and bandwidth. Trace with POSIX enabled (remove POSIX from "
            "DARSHAN_MOD_DISABLE and MOD_DISABLE in the Darshan config file)"
        )
    return flags


def coverage_flags(info: dict, checkpoint_dir: str | None, logs: int, checkpoint_bytes: int) -> list[str]:
    """Flag a mode without checkpoint figures: no logs, no checkpoint directory or no checkpoint I/O."""
    searched = ", ".join(info.get("searched") or []) or "no directory"
    if logs == 0:
        return [f"no Darshan logs found in {searched}; check that the job ran with Darshan and that the "
                "directory is the one it wrote its logs to"]
    if not checkpoint_dir:
        return ["no checkpoint directory: no log wrote a checkpoint file (.distcp, .metadata, .pt, ...); set "
                "existing_logs.<mode>.checkpoint_dir to the directory the job checkpointed into"]
    if checkpoint_bytes == 0:
        return [f"no checkpoint I/O recorded under {checkpoint_dir}"]
    return []


def compute(mode: str, processes: pd.DataFrame, logs_dir: Path, info: dict, manifest: dict | None) -> tuple[dict, pd.DataFrame]:
    """Compute the mode's metrics and the per-process table.

    Every log in ``processes`` keeps a row in the per-process table. One that
    cannot be used, and a mode with no logs or no checkpoint I/O, is named in
    ``flags`` instead of changing the figures without a word.
    """
    checkpoint_dir = info.get("checkpoint_dir")
    result: dict = {
        "mode": mode,
        "source": info.get("source", "run"),
        "traced": bool(info.get("traced", True)),
        "checkpoint_dir": checkpoint_dir,
        "checkpoint_dir_inferred": bool(info.get("checkpoint_dir_inferred", False)),
        "application": application_figures(manifest),
        "world_size": manifest.get("world_size") if manifest else None,
        "job_id": manifest.get("job_id") if manifest else None,
        "flags": [],
    }
    integrity = result["application"].get("integrity") or ""
    if integrity.startswith("mismatch"):
        result["flags"].append(f"integrity {integrity}")
    if not result["traced"]:
        result["flags"].append("not traced")
        return result, pd.DataFrame()

    contents, rows = process_rows(processes, logs_dir, checkpoint_dir, result["flags"])
    per_process = pd.DataFrame(rows)

    used = processes[processes["log"].isin(list(contents))]
    labels, nprocs = accumulation_ranks(used)
    ranks = processes.loc[processes["role"] == "rank", "rank"].dropna()
    result["ranks"] = int(ranks.nunique())
    result["logs"] = int(len(processes))
    result["unreadable_logs"] = int(len(processes) - len(contents))
    result["roles"] = {role: int(count) for role, count in processes["role"].value_counts().items()}

    tables = [c.records for c in contents.values() if len(c.records)]
    all_records = pd.concat(tables, ignore_index=True) if tables else empty_records()
    for scope in SCOPES:
        scoped = all_records if scope == "all" else all_records[under_directory(all_records["file"], checkpoint_dir)]
        figures = file_figures(scoped)
        parts = []
        for name, log_contents in contents.items():
            subset = log_contents.posix if scope == "all" else posix_subset(log_contents, checkpoint_dir)
            if subset is not None:
                parts.append((labels[name], subset))
        figures.update(slowest_rank_figures(parts, nprocs))
        result[scope] = figures

    result["checkpoints_written"] = checkpoints_written(all_records, checkpoint_dir)
    per_rank = rank_table(used, contents, checkpoint_dir)
    result["per_rank"] = per_rank.to_dict(orient="records")
    result["rank_imbalance_bytes"] = imbalance(per_rank["checkpoint_bytes_written"])
    result["rank_imbalance_time"] = imbalance(per_rank["checkpoint_write_time_s"])
    result["checkpoint"]["write_bandwidth_by_slowest_mib_per_s"] = write_bandwidth(
        result["checkpoint"]["bytes_written"], per_rank["checkpoint_write_time_s"])
    result["flags"] += coverage_flags(info, checkpoint_dir, len(processes), result["checkpoint"]["bytes_written"])
    return result, per_process


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", required=True)
    parser.add_argument("--processes", type=Path, required=True, help="processes.csv from locate_logs.py")
    parser.add_argument("--info", type=Path, required=True, help="info JSON from locate_logs.py")
    parser.add_argument("--logs-dir", type=Path, required=True, help="directory of the copied logs")
    parser.add_argument("--manifest", type=Path, help="the training job's manifest.json, if there is one")
    parser.add_argument("--output", type=Path, required=True, help="metrics JSON")
    parser.add_argument("--per-process", type=Path, required=True, help="per-process CSV")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    processes = pd.read_csv(args.processes, dtype={"error": str}, keep_default_na=True)
    processes["error"] = processes["error"].fillna("")
    info = json.loads(args.info.read_text())
    manifest = json.loads(args.manifest.read_text()) if args.manifest and args.manifest.is_file() else None
    result, per_process = compute(args.mode, processes, args.logs_dir, info, manifest)

    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1, default=str) + "\n")
    per_process.to_csv(args.per_process, index=False)
    for flag in result["flags"]:
        log.warning("%s: %s", args.mode, flag)
    return 0


if __name__ == "__main__":
    sys.exit(main())
