"""Read Darshan logs with PyDarshan into the few tables this workflow needs.

One log is one process: the non-MPI Darshan runtime writes a log per process and
each records ``nprocs=1`` and rank 0. A damaged log raises :class:`LogReadError`
with the path, what is wrong and what to do, so the caller can flag it instead
of losing it.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import struct
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

LOG_NAME_FORM = "<user>_<exe>_id<jobid>-<pid>_<month>-<day>-<seconds>-<hash>_<n>.darshan"

# Modules whose records count bytes and time per file.
IO_MODULES = ("POSIX", "STDIO")

# The uncompressed header at the start of every log, from include/darshan-log-format.h
# and darshan_log_get_header() in darshan-util/darshan-logutils.c of Darshan 3.5.0.
# Format 3.41 has 64 module slots; formats 3.00 to 3.21 have 16 and a 32-bit
# partial flag. Each layout gives where the log maps start (the name map, then
# one map per module, each map a uint64 offset and a uint64 length), how many
# maps there are and the size of the header.
# NOTE: the layout of the formats before 3.41 comes from that source alone; no
# log of those formats was at hand to check it.
DARSHAN_MAGIC_NR = 6567223
HEADER_LAYOUTS = {
    "3.41": (32, 1 + 64, 1328),
    "3.00": (24, 1 + 16, 360),
    "3.10": (24, 1 + 16, 360),
    "3.20": (24, 1 + 16, 360),
    "3.21": (24, 1 + 16, 360),
}
COMPRESSED_FILE_MAGIC = {b"\x1f\x8b": "gzip (run gunzip on it)", b"BZh": "bzip2 (run bunzip2 on it)",
                         b"\xfd7zXZ": "xz (run unxz on it)", b"\x28\xb5\x2f\xfd": "zstd (run unzstd on it)"}
NOT_A_LOG_FIX = "Remove it from the log directory, or put the original .darshan file in its place."
TRUNCATED_FIX = ("Copy it again from where Darshan wrote it. If the original is short too, the process "
                 "was killed while Darshan wrote the log and its records are lost.")


class LogReadError(RuntimeError):
    """Raised when a log file cannot be read; ``reason`` gives the cause and the fix, without the path."""

    def __init__(self, path: Path | str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason

    def __reduce__(self):
        # Worker processes send the error back pickled; keep both arguments.
        return (type(self), (self.path, self.reason))


@dataclass
class LogName:
    """Job id, PID and state of a process, parsed from the file name of its Darshan log.

    ``jobid`` and ``pid`` are None for a file whose name is not a Darshan log
    name, and ``problem`` is set for a directory entry that cannot be read as a
    log at all (a directory that cannot be listed).
    """

    path: Path
    jobid: int | None
    pid: int | None
    partial: bool
    problem: str | None = None

    @classmethod
    def parse(cls, path: Path) -> "LogName | None":
        """Parse a Darshan log file name; None when the name is not one."""
        match = LOG_NAME.search(path.name)
        if not match:
            return None
        return cls(path=path, jobid=int(match["jobid"]), pid=int(match["pid"]), partial=bool(match["partial"]))

    @classmethod
    def unnamed(cls, path: Path, problem: str | None = None) -> "LogName":
        """Describe a directory entry that looks like a log but has no Darshan log name."""
        return cls(path=path, jobid=None, pid=None, partial=False, problem=problem)

    @property
    def is_darshan_name(self) -> bool:
        """Whether the file name has the form Darshan gives its logs."""
        return self.pid is not None


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


def empty_records() -> pd.DataFrame:
    """Return a records table with no rows and every column a log can give.

    A log without POSIX or STDIO records still yields these columns, so sums
    over it are zero instead of a missing column.
    """
    columns = ["module", "file", "id", "rank", *COMMON_COUNTERS, *POSIX_ONLY_COUNTERS, *COMMON_FCOUNTERS]
    table = pd.DataFrame({column: pd.Series(dtype="float64") for column in columns})
    table["module"] = table["module"].astype("object")
    table["file"] = table["file"].astype("object")
    table["id"] = table["id"].astype("uint64")
    return table


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


def _file_kind(mode: int) -> str:
    """Name the kind of a directory entry that is not a regular file."""
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def _open_header(path: Path, size: int) -> bytes:
    """Read the first bytes of a log, raising LogReadError when the file cannot be opened."""
    try:
        with open(path, "rb") as file:
            return file.read(min(size, 4096))
    except PermissionError as error:
        raise LogReadError(path, (
            f"cannot be read by this user ({error.strerror}). Darshan writes each log readable by its owner only "
            "(mode 0400): ask the owner to run `chmod a+r` on it, or copy the logs as their owner"
        )) from error
    except OSError as error:
        raise LogReadError(path, f"cannot be opened ({error.strerror or error})") from error


def check_log_file(path: Path) -> None:
    """Check that a file is a complete Darshan log before darshan-util opens it.

    darshan-util aborts or crashes on some damaged files and reads others without
    an error: a log missing only its last bytes yields fewer records and no
    warning. So this reads the uncompressed header itself and checks the format
    version, the magic number and that every region the header maps lies inside
    the file. It opens only regular files, so a named pipe cannot block it.

    Raises:
        LogReadError: the file is missing, not a regular file, unreadable, empty,
            not a Darshan log, of a format darshan-util cannot read, or truncated.
    """
    path = Path(path)
    size = _regular_file_size(path)
    _check_header(path, _open_header(path, size), size)


def _regular_file_size(path: Path) -> int:
    """Return the size of a non-empty regular file, raising LogReadError for anything else."""
    try:
        status = path.stat()
    except FileNotFoundError as error:
        if path.is_symlink():
            raise LogReadError(path, f"dangling symbolic link to {os.readlink(path)}. "
                               "Point it at the log file or remove it") from error
        raise LogReadError(path, "not found: it was removed after the logs were listed. Run the workflow again") from error
    except PermissionError as error:
        raise LogReadError(path, f"a directory above it cannot be searched by this user ({error.strerror}). "
                           "Make the directories readable (`chmod a+rx`) or copy the logs elsewhere") from error
    if not stat.S_ISREG(status.st_mode):
        raise LogReadError(path, f"{_file_kind(status.st_mode)}, not a Darshan log file. {NOT_A_LOG_FIX}")
    if status.st_size == 0:
        raise LogReadError(path, (
            "empty file, not a Darshan log. The process was killed while Darshan created the log, or a copy "
            "failed: copy it again, or rerun the job"
        ))
    return status.st_size


def _check_header(path: Path, head: bytes, size: int) -> None:
    """Check the format version, the magic number and the log maps of a log's first bytes."""
    compressed = next((what for magic, what in COMPRESSED_FILE_MAGIC.items() if head.startswith(magic)), None)
    if compressed:
        raise LogReadError(path, f"not a Darshan log but a file compressed with {compressed}")
    version = head[:8].split(b"\0")[0].decode("ascii", "replace")
    if not re.fullmatch(r"\d+\.\d+", version):
        raise LogReadError(path, f"not a Darshan log: it does not begin with a Darshan log format version. {NOT_A_LOG_FIX}")
    if version not in HEADER_LAYOUTS:
        raise LogReadError(path, (
            f"Darshan log format {version}, which this PyDarshan cannot read (it reads {', '.join(HEADER_LAYOUTS)}). "
            "Install the PyDarshan release that matches the Darshan runtime that wrote it"
        ))

    maps_offset, map_count, header_size = HEADER_LAYOUTS[version]
    if size < header_size:
        raise LogReadError(path, (
            f"truncated: {size:,} bytes, shorter than the {header_size:,}-byte header of "
            f"Darshan log format {version}. {TRUNCATED_FIX}"
        ))
    byte_order = next((order for order in "<>" if struct.unpack_from(f"{order}q", head, 8)[0] == DARSHAN_MAGIC_NR), None)
    if byte_order is None:
        raise LogReadError(path, f"not a Darshan log: its header has no Darshan magic number. {NOT_A_LOG_FIX}")
    maps = struct.unpack_from(f"{byte_order}{2 * map_count}Q", head, maps_offset)
    data_end = max((offset + length for offset, length in zip(maps[::2], maps[1::2]) if length), default=header_size)
    if data_end > size:
        raise LogReadError(path, (
            f"truncated: its header maps data up to byte {data_end:,} but the file has {size:,} bytes. {TRUNCATED_FIX}"
        ))


def read_log(path: Path) -> LogContents:
    """Read one Darshan log with PyDarshan, after checking that it is a complete log.

    Raises:
        LogReadError: the file is empty, truncated, not a Darshan log or unreadable.
    """
    path = Path(path)
    check_log_file(path)
    try:
        return _read_report(path)
    except LogReadError:
        raise
    except Exception as error:  # PyDarshan raises RuntimeError, ValueError, KeyError or OSError for damaged logs.
        raise LogReadError(path, f"cannot be read by PyDarshan ({type(error).__name__}: {error}). {TRUNCATED_FIX}") from error


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
                raise LogReadError(path, f"module {module} lists records but none could be read. {TRUNCATED_FIX}")

    job = report.metadata["job"]
    tables = [_module_table(report, module) for module in IO_MODULES if module in report.records]
    records = pd.concat(tables, ignore_index=True) if tables else empty_records()
    if len(records) and records["file"].isna().all():
        raise LogReadError(path, f"file names could not be read. {TRUNCATED_FIX}")
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
        For each path, its contents or the LogReadError that gives why it is unusable.
    """
    paths = [Path(path) for path in paths]
    results: dict[Path, LogContents | LogReadError] = {}
    if not paths:
        return results
    workers = workers or min(len(paths), os.cpu_count() or 1)
    # NOTE: the pool forks, so a worker forked from a process with torch threads or a
    # process group can hang on a lock one of them held. The workflow's scripts run none.
    try:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(_read_or_error, path): path for path in paths}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
    except BrokenProcessPool:
        log.warning("a worker died while reading logs; reading the remaining %d logs one by one",
                    len(paths) - len(results))

    for path in paths:
        if path not in results:
            results[path] = _read_alone(path)
    return results


def _read_alone(path: Path, attempts: int = 2) -> LogContents | LogReadError:
    """Read one log in a process of its own, and call it damaged only when every attempt crashes.

    A damaged log crashes darshan-util every time. A crash that does not repeat on a
    valid log has been seen under heavy load, so one crash is not enough to drop a log.
    """
    for attempt in range(1, attempts + 1):
        try:
            with ProcessPoolExecutor(max_workers=1) as pool:
                result = pool.submit(_read_or_error, path).result()
        except BrokenProcessPool:
            log.warning("PyDarshan crashed while reading %s (attempt %d of %d)", path, attempt, attempts)
            continue
        if attempt > 1:
            log.warning("read %s on attempt %d after a crash", path, attempt)
        return result
    return LogReadError(path, f"PyDarshan crashed while reading it (damaged log). {TRUNCATED_FIX}")


def under_directory(files: pd.Series, directory: str | None) -> pd.Series:
    """Return a mask of the file names that lie under ``directory``."""
    if not directory:
        return pd.Series(False, index=files.index)
    prefix = directory.rstrip("/") + "/"
    return files.fillna("").str.startswith(prefix)
