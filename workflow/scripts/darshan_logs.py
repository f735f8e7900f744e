"""Read Darshan logs with PyDarshan into the few tables this workflow needs.

One log is one process: the non-MPI Darshan runtime writes a log per process and
each says ``nprocs=1`` and rank 0. A damaged log raises :class:`LogReadError`
with the path, so the caller can flag it instead of losing it.
"""

from __future__ import annotations

import logging
import os
import re
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)

# <user>_<exe>_id<jobid>-<pid>_<month>-<day>-<seconds of day>-<hash>[_<n>].darshan[_partial]
LOG_NAME = re.compile(
    r"_id(?P<jobid>\d+)-(?P<pid>\d+)_(?P<month>\d+)-(?P<day>\d+)-(?P<seconds>\d+)-(?P<hash>\d+)"
    r"(?:_\d+)?\.darshan(?P<partial>_partial)?$"
)

# Modules whose records count bytes and time per file.
IO_MODULES = ("POSIX", "STDIO")


class LogReadError(RuntimeError):
    """Raised when PyDarshan cannot read a log file."""


@dataclass
class LogName:
    """What a Darshan log's file name says about the process that wrote it."""

    path: Path
    jobid: int
    pid: int
    partial: bool

    @classmethod
    def parse(cls, path: Path) -> "LogName | None":
        """Parse a Darshan log file name; None when the name is not one."""
        match = LOG_NAME.search(path.name)
        if not match:
            return None
        return cls(path=path, jobid=int(match["jobid"]), pid=int(match["pid"]), partial=bool(match["partial"]))


@dataclass
class LogContents:
    """The parts of one log that the workflow reads: job metadata and per-file records."""

    path: Path
    exe: str
    jobid: int
    start_s: float
    end_s: float
    run_time_s: float
    darshan_version: str | None
    modules: list[str]
    partial_modules: list[str]
    # One row per (module, file record): the module, the file name and the counters
    # this workflow uses, with the module prefix removed (BYTES_WRITTEN, F_WRITE_TIME, ...).
    records: pd.DataFrame = field(repr=False)
    # The POSIX records in PyDarshan's own layout, for its accumulator.
    posix: dict | None = field(default=None, repr=False)
    has_dxt: bool = False


COMMON_COUNTERS = ("OPENS", "READS", "WRITES", "BYTES_READ", "BYTES_WRITTEN", "SEEKS")
COMMON_FCOUNTERS = (
    "F_OPEN_START_TIMESTAMP", "F_CLOSE_END_TIMESTAMP",
    "F_READ_START_TIMESTAMP", "F_READ_END_TIMESTAMP",
    "F_WRITE_START_TIMESTAMP", "F_WRITE_END_TIMESTAMP",
    "F_READ_TIME", "F_WRITE_TIME", "F_META_TIME",
)
POSIX_ONLY_COUNTERS = (
    "FSYNCS", "FDSYNCS", "STATS", "RENAME_SOURCES", "RENAMED_FROM",
    "ACCESS1_ACCESS", "ACCESS2_ACCESS", "ACCESS3_ACCESS", "ACCESS4_ACCESS",
    "ACCESS1_COUNT", "ACCESS2_COUNT", "ACCESS3_COUNT", "ACCESS4_COUNT",
    "SIZE_WRITE_0_100", "SIZE_WRITE_100_1K", "SIZE_WRITE_1K_10K", "SIZE_WRITE_10K_100K",
    "SIZE_WRITE_100K_1M", "SIZE_WRITE_1M_4M", "SIZE_WRITE_4M_10M", "SIZE_WRITE_10M_100M",
    "SIZE_WRITE_100M_1G", "SIZE_WRITE_1G_PLUS",
)


def _module_table(report, module: str) -> pd.DataFrame:
    frames = report.records[module].to_df()
    counters = frames["counters"]
    fcounters = frames["fcounters"]
    wanted = [f"{module}_{name}" for name in COMMON_COUNTERS + (POSIX_ONLY_COUNTERS if module == "POSIX" else ())]
    wanted = [column for column in wanted if column in counters.columns]
    table = counters[["id", "rank"] + wanted].copy()
    # Record ids are 64-bit hashes: keep them unsigned, or a concat turns them into floats.
    table["id"] = table["id"].astype("uint64")
    fwanted = [f"{module}_{name}" for name in COMMON_FCOUNTERS if f"{module}_{name}" in fcounters.columns]
    table = table.join(fcounters[fwanted])
    table.columns = [column.removeprefix(f"{module}_") for column in table.columns]
    table.insert(0, "module", module)
    table.insert(1, "file", table["id"].map(report.name_records))
    return table


def read_log(path: Path) -> LogContents:
    """Read one Darshan log with PyDarshan.

    Raises:
        LogReadError: the file is empty, truncated, not a Darshan log or unreadable.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise LogReadError(f"{path}: empty file, not a Darshan log")
        return _read_report(path)
    except LogReadError:
        raise
    except Exception as error:  # PyDarshan raises RuntimeError, ValueError, KeyError or OSError for damaged logs.
        raise LogReadError(f"{path}: cannot be read by PyDarshan ({type(error).__name__}: {error})") from error


def _read_report(path: Path) -> LogContents:
    import darshan

    report = darshan.DarshanReport(str(path), read_all=False)
    modules = list(report.modules)
    for module in IO_MODULES:
        if module in modules:
            report.mod_read_all_records(module)
            # A truncated log lists the module but yields no records (darshan-util prints
            # the error to stderr and PyDarshan returns what it has).
            if report.modules[module].get("num_records", 1) and not len(report.records[module]):
                raise LogReadError(f"{path}: module {module} lists records but none could be read (truncated log?)")

    job = report.metadata["job"]
    tables = [_module_table(report, module) for module in IO_MODULES if module in report.records]
    records = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=["module", "file", "id"])
    if len(records) and records["file"].isna().all():
        raise LogReadError(f"{path}: file names could not be read (truncated log?)")
    posix = report.records["POSIX"].to_df() if "POSIX" in report.records else None
    partial = [name for name, info in report.modules.items() if info.get("partial_flag")]
    start_s = job["start_time_sec"] + job.get("start_time_nsec", 0) / 1e9
    end_s = job["end_time_sec"] + job.get("end_time_nsec", 0) / 1e9
    return LogContents(
        path=path,
        exe=report.metadata.get("exe", ""),
        jobid=int(job["jobid"]),
        start_s=start_s,
        end_s=end_s,
        run_time_s=float(job.get("run_time", end_s - start_s)),
        darshan_version=job.get("metadata", {}).get("lib_ver"),
        modules=modules,
        partial_modules=partial,
        records=records,
        posix=posix,
        has_dxt="DXT_POSIX" in modules,
    )


def _read_or_error(path: Path) -> "LogContents | LogReadError":
    try:
        return read_log(path)
    except LogReadError as error:
        return error


def read_logs(paths: list[Path], workers: int | None = None) -> dict[Path, "LogContents | LogReadError"]:
    """Read many logs in a pool of worker processes, isolating logs that crash PyDarshan.

    darshan-util can abort or crash the interpreter on a truncated log (an assertion
    in darshan_log_close, or a segmentation fault while reading names), so no log is
    read in this process. When a worker dies, every log it had not finished is read
    again alone in its own process, and the one that crashes it is reported.

    Returns:
        For each path, its contents or the LogReadError that says why it is unusable.
    """
    paths = [Path(path) for path in paths]
    results: dict[Path, LogContents | LogReadError] = {}
    if not paths:
        return results
    workers = workers or min(len(paths), os.cpu_count() or 1)
    try:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(_read_or_error, path): path for path in paths}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
    except BrokenProcessPool:
        log.warning("a worker died while reading logs; reading the remaining %d logs one by one",
                    len(paths) - len(results))

    for path in paths:
        if path in results:
            continue
        try:
            with ProcessPoolExecutor(max_workers=1) as pool:
                results[path] = pool.submit(_read_or_error, path).result()
        except BrokenProcessPool:
            results[path] = LogReadError(f"{path}: PyDarshan crashed while reading it (damaged or truncated log)")
    return results


def under_directory(files: pd.Series, directory: str | None) -> pd.Series:
    """Return a mask of the file names that lie under ``directory``."""
    if not directory:
        return pd.Series(False, index=files.index)
    prefix = directory.rstrip("/") + "/"
    return files.fillna("").str.startswith(prefix)
