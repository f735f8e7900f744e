"""Find a job's Darshan logs, copy them into the results and name each process's role.

Non-MPI Darshan logs carry no rank of their own: every log records ``nprocs=1`` and
rank 0. The rank and role of each log's process come from the job's manifest
(PIDs recorded by the training job) or, for logs of an earlier run without a
manifest, are inferred from the log itself: its command line and the checkpoint
files it wrote (DCP names each rank's shard ``__<rank>_<n>.distcp``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from darshan_logs import LOG_NAME_FORM, LogContents, LogName, LogReadError, read_logs, under_directory

log = logging.getLogger("locate_logs")

ROLES = ("launcher", "rank", "checkpoint_writer", "resource_tracker", "other")
LAUNCHER_EXE = re.compile(r"torchrun|torch\.distributed\.(run|launch)|(^|/)srun( |$)|(^|/)mpirun|(^|/)mpiexec")
TRACKER_EXE = re.compile(r"multiprocessing\.resource_tracker")
CHILD_EXE = re.compile(r"multiprocessing\.(spawn|forkserver)")
DCP_SHARD = re.compile(r"/__(?P<rank>\d+)_\d+\.distcp$")
COORDINATOR_FILE = re.compile(r"/\.metadata(\.tmp)?$")
CHECKPOINT_SUFFIXES = (".distcp", ".pt", ".pth", ".ckpt", ".safetensors")
STEP_DIRECTORY = re.compile(r"/step_\d+$")
# Directory entries whose name contains this are treated as Darshan logs, so that
# a damaged or renamed log is listed, while README.txt and the like are ignored.
LOG_LIKE = ".darshan"
# Seconds of clock difference allowed when a log's run is compared with the job's.
CLOCK_SLACK_S = 10.0

COLUMNS = [
    "log", "source", "pid", "jobid", "role", "rank", "rank_source", "exe",
    "start_utc", "end_utc", "run_time_s", "darshan_version", "partial_modules",
    "checkpoint_bytes_written", "checkpoint_bytes_read", "error",
]


class MissingLogError(RuntimeError):
    """Raised when a process that wrote checkpoint data left no Darshan log."""


class ManifestError(ValueError):
    """Raised when a manifest is not valid JSON or lacks what locating the logs needs."""


@dataclass
class FoundLog:
    """A log file that belongs to the job, with what could be read from it."""

    name: LogName
    contents: LogContents | None = None
    error: str | None = None
    role: str = "other"
    rank: int | None = None
    rank_source: str = ""

    @property
    def usable(self) -> bool:
        """Whether the log was read and belongs in this job's figures."""
        return self.contents is not None and not self.error


# ---- where to look ------------------------------------------------------------

def dated_directories(base: Path, start: dt.datetime, end: dt.datetime) -> list[Path]:
    """Return ``base/<year>/<month>/<day>`` for every day the job ran.

    Darshan names the day directory with the process's local time and no zero
    padding (darshan-runtime/lib/darshan-core.c), so both the UTC and the local
    dates are covered, with one day of slack on each side.
    """
    days: set[dt.date] = set()
    for moment in (start, end):
        for zone_moment in (moment.astimezone(dt.timezone.utc), moment.astimezone()):
            for offset in (-1, 0, 1):
                days.add(zone_moment.date() + dt.timedelta(days=offset))
    first, last = min(days), max(days)
    day = first
    directories = []
    while day <= last:
        directories.append(base / str(day.year) / str(day.month) / str(day.day))
        day += dt.timedelta(days=1)
    return directories


def scan(directories: list[Path], recursive: bool = False) -> list[LogName]:
    """List every entry in the directories that looks like a Darshan log.

    Final logs and ``.darshan_partial`` ones come with the job id and PID of
    their name. Entries whose name contains ``.darshan`` but is not a Darshan
    log name, and those that are not regular files (a dangling link, a named
    pipe), are listed too, so that the caller can report them instead of losing
    them. A directory that cannot be listed is listed with its problem, because
    logs in it would otherwise be missed without a word. Directories that do not
    exist are skipped: the dated ones often do not.
    """
    found: list[LogName] = []
    for directory in directories:
        if not directory.is_dir():
            continue
        failures: list[OSError] = []
        for root, subdirectories, files in os.walk(directory, onerror=failures.append):
            subdirectories.sort()
            for file_name in sorted(files):
                if LOG_LIKE in file_name:
                    path = Path(root) / file_name
                    found.append(LogName.parse(path) or LogName.unnamed(path))
            if not recursive:
                break
        for failure in failures:
            found.append(LogName.unnamed(Path(failure.filename), (
                f"directory cannot be listed ({failure.strerror}), so logs in it were not searched. "
                "Make it readable (`chmod a+rx`) or copy its logs to a directory you can read"
            )))
    return found


# ---- which logs belong to the job ------------------------------------------------

def manifest_pids(manifest: dict) -> dict[int, dict]:
    """Map each PID the manifest records to its process entry."""
    return {int(process["pid"]): process for process in manifest.get("processes", [])}


def belongs_to_job(name: LogName, manifest: dict, own_directory: Path | None) -> bool:
    """Decide whether a log belongs to the manifest's job.

    A log in the job's own log directory belongs to it. Elsewhere (a site's shared
    log directory) a log belongs to it when its Darshan job id is the Slurm job id,
    or when its PID is one the job recorded and its job id is that PID (Darshan's
    job id without a scheduler). An entry without a Darshan log name belongs to
    the job only in its own directory.
    """
    if own_directory is not None and (name.path == own_directory or own_directory in name.path.parents):
        return True
    if not name.is_darshan_name:
        return False
    job_id = manifest.get("job_id")
    if job_id is not None and str(name.jobid) == str(job_id):
        return True
    return name.pid in manifest_pids(manifest) and name.jobid == name.pid


def required_processes(manifest: dict) -> dict[int, str]:
    """Return the PIDs whose logs must exist: the processes that wrote checkpoint data.

    A rank with a background checkpoint writer (process-based async DCP) is
    represented by its writer, which does the writing.
    """
    ranks_with_data: set[int] = set()
    for checkpoint in manifest.get("checkpoints", []):
        for rank, written in (checkpoint.get("bytes_by_rank") or {}).items():
            if written:
                ranks_with_data.add(int(rank))

    required: dict[int, str] = {}
    processes = manifest.get("processes", [])
    for rank in sorted(ranks_with_data):
        writers = [p for p in processes if p.get("role") == "checkpoint_writer" and p.get("rank") == rank]
        chosen = writers or [p for p in processes if p.get("role") == "rank" and p.get("rank") == rank]
        for process in chosen:
            required[int(process["pid"])] = f"{process['role']} of rank {rank}"
    return required


def wait_for_logs(search: list[Path], manifest: dict, own_directory: Path | None,
                  wait_s: float, poll_s: float = 1.0) -> list[LogName]:
    """Scan until every required process has a finished log or ``wait_s`` passes."""
    required = required_processes(manifest)
    deadline = time.monotonic() + wait_s
    while True:
        scanned = scan(search)
        names = [n for n in scanned if belongs_to_job(n, manifest, own_directory)]
        finished = {n.pid for n in names if not n.partial and n.is_darshan_name}
        waiting = [pid for pid in required if pid not in finished]
        if not waiting or time.monotonic() >= deadline:
            for stray in (n for n in scanned if not n.is_darshan_name and n not in names):
                log.warning("ignoring %s in a shared log directory: %s", stray.path,
                            stray.problem or f"not a Darshan log name ({LOG_NAME_FORM})")
            return names
        log.info("waiting for the logs of PIDs %s", waiting)
        time.sleep(poll_s)


# ---- roles ----------------------------------------------------------------------

def shard_ranks(contents: LogContents, checkpoint_dir: str | None) -> set[int]:
    """Return the ranks whose checkpoint data this process wrote, from file names."""
    records = contents.records
    written = records[(records["BYTES_WRITTEN"].fillna(0) > 0) & under_directory(records["file"], checkpoint_dir)]
    ranks: set[int] = set()
    for file in written["file"]:
        shard = DCP_SHARD.search(file)
        if shard:
            ranks.add(int(shard["rank"]))
        elif COORDINATOR_FILE.search(file) or file.endswith((".pt", ".pth")):
            ranks.add(0)
    return ranks


def attribute_from_manifest(found: list[FoundLog], manifest: dict) -> None:
    """Give each log the role and rank its PID has in the manifest."""
    by_pid = manifest_pids(manifest)
    for entry in found:
        process = by_pid.get(entry.name.pid)
        if process is not None:
            entry.role = process.get("role", "other")
            entry.rank = process.get("rank")
            entry.rank_source = "manifest"
        elif entry.contents is not None and TRACKER_EXE.search(entry.contents.exe):
            entry.role, entry.rank_source = "resource_tracker", "command line"


def infer_roles(found: list[FoundLog], checkpoint_dir: str | None) -> None:
    """Infer roles and ranks from the logs alone, for logs without a manifest.

    Launchers (torchrun, srun) and multiprocessing resource trackers are known by
    their command line. The training program's own processes are the ranks, and
    multiprocessing children of a rank that wrote checkpoint data are background
    checkpoint writers. When no launcher log exists and one training process
    started children that did the writing, that process is a
    ``torch.multiprocessing.spawn`` parent and its children are the ranks.
    A rank number comes from the DCP shard names a process wrote; ranks that wrote
    none get the remaining numbers in PID order.
    """
    readable = [entry for entry in found if entry.usable]
    launchers = [e for e in readable if LAUNCHER_EXE.search(e.contents.exe)]
    trackers = [e for e in readable if TRACKER_EXE.search(e.contents.exe)]
    children = [e for e in readable if CHILD_EXE.search(e.contents.exe) and e not in trackers]
    mains = [e for e in readable if e not in launchers + trackers + children]

    for entry in launchers:
        entry.role, entry.rank_source = "launcher", "command line"
    for entry in trackers:
        entry.role, entry.rank_source = "resource_tracker", "command line"

    evidence = {id(e): shard_ranks(e.contents, checkpoint_dir) for e in mains + children}
    spawn_parent = (not launchers and len(mains) == 1 and children and not evidence[id(mains[0])])
    if spawn_parent:
        mains[0].role, mains[0].rank_source = "launcher", "spawn parent (command line)"
        ranks, helpers = children, []
    else:
        ranks, helpers = mains, children

    for entry in helpers:
        entry.role = "checkpoint_writer" if evidence[id(entry)] else "other"
        if evidence[id(entry)]:
            entry.rank = min(evidence[id(entry)])
            entry.rank_source = "checkpoint file names"

    for entry in ranks:
        entry.role = "rank"
        if evidence[id(entry)]:
            entry.rank = min(evidence[id(entry)])
            entry.rank_source = "checkpoint file names"
    taken = {entry.rank for entry in ranks if entry.rank is not None}
    free = iter(number for number in range(len(ranks) + len(taken) + 1) if number not in taken)
    for entry in sorted((e for e in ranks if e.rank is None), key=lambda e: e.name.pid):
        entry.rank, entry.rank_source = next(free), "PID order"


def infer_checkpoint_dir(found: list[FoundLog]) -> str | None:
    """Guess the checkpoint directory from the checkpoint-like files the logs wrote."""
    parents: set[str] = set()
    for entry in found:
        if not entry.usable:
            continue
        records = entry.contents.records
        written = records[records["BYTES_WRITTEN"].fillna(0) > 0]["file"].dropna()
        for file in written:
            if file.endswith(CHECKPOINT_SUFFIXES) or COORDINATOR_FILE.search(file):
                parents.add(str(Path(file).parent))
    if not parents:
        return None
    common = os.path.commonpath(sorted(parents))
    # A single DCP checkpoint lies in its own step directory; its parent is the checkpoint directory.
    if len(parents) == 1 and STEP_DIRECTORY.search(common):
        return str(Path(common).parent)
    return common


# ---- output -----------------------------------------------------------------------

def moment_text(seconds: float) -> str:
    """Format seconds since the epoch for a message, to the second."""
    return dt.datetime.fromtimestamp(seconds, tz=dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def utc_text(seconds: float | None) -> str:
    """Format seconds since the epoch as ISO 8601 UTC, or "" for None."""
    if seconds is None:
        return ""
    return dt.datetime.fromtimestamp(seconds, tz=dt.timezone.utc).isoformat().replace("+00:00", "Z")


def process_table(found: list[FoundLog], checkpoint_dir: str | None) -> pd.DataFrame:
    """Build the per-log table that locate_logs writes as processes.csv."""
    rows = []
    for entry in found:
        contents = entry.contents
        written = read = None
        if contents is not None:
            records = contents.records
            mask = under_directory(records["file"], checkpoint_dir)
            written = int(records.loc[mask, "BYTES_WRITTEN"].fillna(0).sum())
            read = int(records.loc[mask, "BYTES_READ"].fillna(0).sum())
        rows.append({
            "log": entry.name.path.name,
            "source": str(entry.name.path),
            "pid": entry.name.pid,
            "jobid": entry.name.jobid,
            "role": entry.role,
            "rank": entry.rank,
            "rank_source": entry.rank_source,
            "exe": contents.exe if contents else "",
            "start_utc": utc_text(contents.start_s) if contents else "",
            "end_utc": utc_text(contents.end_s) if contents else "",
            "run_time_s": contents.run_time_s if contents else None,
            "darshan_version": contents.darshan_version if contents else "",
            "partial_modules": ",".join(contents.partial_modules) if contents else "",
            "checkpoint_bytes_written": written,
            "checkpoint_bytes_read": read,
            "error": entry.error or "",
        })
    table = pd.DataFrame(rows, columns=COLUMNS)
    for column in ("rank", "pid", "jobid"):
        table[column] = table[column].astype("Int64")
    role_order = {role: index for index, role in enumerate(ROLES)}
    return table.sort_values(by=["role", "rank", "pid"], key=lambda c: c.map(role_order) if c.name == "role" else c).reset_index(drop=True)


PARTIAL_ERROR = (
    "unfinished log (.darshan_partial): the process stopped while Darshan wrote its log, or is still "
    "running. If the job has ended, the process was killed and its I/O is lost: rerun the job"
)


def renamed_log_error(contents: LogContents) -> str:
    """Describe a readable Darshan log whose file name is not the one Darshan gave it."""
    return (
        f"a Darshan log (Darshan job id {contents.jobid}, command {contents.exe.split(' ')[0] or 'unknown'}) "
        f"whose file name is not a Darshan log name ({LOG_NAME_FORM}), so its process cannot be "
        "identified. Give it back the name Darshan gave it"
    )


def duplicate_names(names: list[LogName]) -> dict[int, Path]:
    """Map the index of each log whose file name was seen before to the first path with that name.

    Logs are copied into one flat directory by name, so a second copy of one log
    (the same name in two subdirectories) would be counted twice or overwrite it.
    """
    first: dict[str, Path] = {}
    duplicates: dict[int, Path] = {}
    for index, name in enumerate(names):
        if name.path.name in first:
            duplicates[index] = first[name.path.name]
        else:
            first[name.path.name] = name.path
    return duplicates


def read_found(names: list[LogName]) -> list[FoundLog]:
    """Read every log; a damaged or stray one keeps its row with the error instead of vanishing.

    A ``.darshan_partial`` log, an entry that could not be listed and a second
    copy of a log are not read. An entry without a Darshan log name is read only
    to say whether it is a renamed log or not a log at all.
    """
    duplicates = duplicate_names(names)
    to_read = [name.path for index, name in enumerate(names)
               if not name.partial and not name.problem and index not in duplicates]
    contents = read_logs(to_read)
    found = []
    for index, name in enumerate(names):
        entry = FoundLog(name=name)
        result = contents.get(name.path)
        if name.problem:
            entry.error = name.problem
        elif name.partial:
            entry.error = PARTIAL_ERROR
        elif index in duplicates:
            entry.error = (f"the same file name as {duplicates[index]}: a second copy of one log, left out so that "
                           "its I/O is not counted twice. Keep one copy")
        elif isinstance(result, LogReadError):
            entry.error = result.reason
        elif not name.is_darshan_name:
            entry.error = renamed_log_error(result)
        else:
            entry.contents = result
        if entry.error:
            log.error("%s: %s", name.path, entry.error)
        found.append(entry)
    return found


# ---- logs of other jobs --------------------------------------------------------------

def scheduler_job_id(entry: FoundLog) -> int | None:
    """Return the scheduler's job id in a log's name; None when Darshan used the PID (no scheduler)."""
    if entry.name.jobid is None or entry.name.jobid == entry.name.pid:
        return None
    return entry.name.jobid


def job_window(manifest: dict) -> tuple[float, float] | None:
    """Return the job's start and end from the manifest in seconds since the epoch, or None when absent.

    Raises:
        ManifestError: a time is there but not ISO 8601.
    """
    if not manifest.get("start_utc") or not manifest.get("end_utc"):
        return None
    try:
        return tuple(dt.datetime.fromisoformat(str(manifest[key]).replace("Z", "+00:00")).timestamp()
                     for key in ("start_utc", "end_utc"))
    except ValueError as error:
        raise ManifestError(f"start_utc or end_utc of the manifest is not an ISO 8601 time ({error})") from None


def flag_other_jobs_by_manifest(found: list[FoundLog], manifest: dict) -> None:
    """Flag the logs in the job's directories that another job wrote.

    A log whose PID the manifest records is the job's. Any other log (a data
    loader worker, a compile worker) is the job's when its process ran during the
    job and, under a scheduler, when its Darshan job id is the job's.
    """
    pids = manifest_pids(manifest)
    window = job_window(manifest)
    job_id = manifest.get("job_id")
    for entry in found:
        if not entry.usable or entry.name.pid in pids:
            continue
        start, end = entry.contents.start_s, entry.contents.end_s
        other_id = scheduler_job_id(entry)
        if job_id is not None and other_id is not None and str(other_id) != str(job_id):
            entry.error = (f"log of another job: its Darshan job id is {other_id} and this job's is {job_id}. "
                           "Keep only this job's logs in its log directory")
        elif window is not None and (end < window[0] - CLOCK_SLACK_S or start > window[1] + CLOCK_SLACK_S):
            entry.error = (f"log of another job: its process ran {moment_text(start)} to {moment_text(end)}, outside "
                           f"this job's run {moment_text(window[0])} to {moment_text(window[1])} in the manifest. "
                           "Keep only this job's logs in its log directory")
        if entry.error:
            log.error("%s: %s", entry.name.path, entry.error)


def split_jobs(entries: list[FoundLog]) -> list[list[FoundLog]]:
    """Group readable logs into jobs: by the scheduler's job id, else by overlapping run times.

    Without a scheduler every log's job id is its own PID, so the processes of
    one job are those whose runs overlap: the launcher runs from before its
    ranks start until after they end.
    NOTE: two jobs that ran at the same time without a scheduler form one group.
    """
    groups: dict[object, list[FoundLog]] = {}
    timed = []
    for entry in entries:
        job_id = scheduler_job_id(entry)
        if job_id is None:
            timed.append(entry)
        else:
            groups.setdefault(("job id", job_id), []).append(entry)
    group_end = None
    for entry in sorted(timed, key=lambda e: e.contents.start_s):
        if group_end is None or entry.contents.start_s > group_end + CLOCK_SLACK_S:
            key = ("time", entry.contents.start_s)
            groups[key] = []
            group_end = entry.contents.end_s
        groups[key].append(entry)
        group_end = max(group_end, entry.contents.end_s)
    return list(groups.values())


def checkpoint_like_bytes(entries: list[FoundLog], checkpoint_dir: str | None) -> int:
    """Sum the bytes the logs wrote to checkpoint files: under ``checkpoint_dir``, else by file name."""
    total = 0
    for entry in entries:
        records = entry.contents.records
        written = records[records["BYTES_WRITTEN"].fillna(0) > 0]
        if checkpoint_dir:
            mask = under_directory(written["file"], checkpoint_dir)
        else:
            files = written["file"].fillna("")
            mask = files.str.endswith(CHECKPOINT_SUFFIXES) | files.map(lambda file: bool(COORDINATOR_FILE.search(file)))
        total += int(written.loc[mask, "BYTES_WRITTEN"].sum())
    return total


def describe_job(entries: list[FoundLog]) -> str:
    """Name a group of logs for a message: its scheduler job id, else when its processes ran."""
    job_id = scheduler_job_id(entries[0])
    if job_id is not None:
        return f"Darshan job id {job_id}"
    start = min(e.contents.start_s for e in entries)
    end = max(e.contents.end_s for e in entries)
    return f"the processes that ran {moment_text(start)} to {moment_text(end)}"


def flag_other_jobs_by_time(found: list[FoundLog], checkpoint_dir: str | None) -> None:
    """Keep one job's logs when a directory without a manifest contains logs of several jobs.

    The job that wrote the most checkpoint data is kept, the latest one on a tie.
    The logs of every other job get an error that names both jobs.
    """
    groups = split_jobs([entry for entry in found if entry.usable])
    if len(groups) < 2:
        return
    kept = max(groups, key=lambda g: (checkpoint_like_bytes(g, checkpoint_dir), max(e.contents.start_s for e in g)))
    for group in groups:
        if group is kept:
            continue
        for entry in group:
            entry.error = (
                f"log of another job ({describe_job(group)}, {len(group)} logs) in the same directory: this mode "
                f"uses {describe_job(kept)}, the job that wrote the most checkpoint data (the latest on a tie). "
                "Give each mode a directory with the logs of one job"
            )
            log.error("%s: %s", entry.name.path, entry.error)


def find_names(manifest: dict | None, logs_dir: Path | None, extra_dirs: list[Path], wait_s: float,
               info: dict) -> list[LogName] | None:
    """List the log entries of the job and record the directories searched in ``info``.

    Returns None for a job that ran without Darshan.

    Raises:
        ManifestError: the manifest lacks the job's start and end.
    """
    if logs_dir is not None:
        names = scan([logs_dir], recursive=True)
        if manifest is not None:
            names = [n for n in names if belongs_to_job(n, manifest, logs_dir)]
        info["searched"] = [str(logs_dir)]
        return names

    assert manifest is not None
    if manifest.get("darshan") is None:
        return None
    own = Path(manifest["darshan"]["log_dir"])
    window = job_window(manifest)
    if window is None:
        raise ManifestError("the manifest has no start_utc and end_utc, so the dated log directories are unknown")
    start, end = (dt.datetime.fromtimestamp(moment, tz=dt.timezone.utc) for moment in window)
    search = [own] + dated_directories(own, start, end)
    for extra in extra_dirs:
        search += [extra] + dated_directories(extra, start, end)
    info["searched"] = [str(path) for path in search]
    return wait_for_logs(search, manifest, own, wait_s)


def check_required_logs(mode: str, found: list[FoundLog], manifest: dict, searched: list[str]) -> None:
    """Check that every process that wrote checkpoint data has a usable log.

    Raises:
        MissingLogError: naming each such process, its PID and why its log is missing or unusable.
    """
    missing = []
    for pid, what in required_processes(manifest).items():
        entries = [e for e in found if e.name.pid == pid]
        if any(e.usable for e in entries):
            continue
        reasons = "; ".join(f"its log {e.name.path.name} is unusable: {e.error}" for e in entries)
        missing.append(f"{what} (PID {pid}{': ' + reasons if reasons else ''})")
    if missing:
        raise MissingLogError(
            f"{mode}: no readable Darshan log for {', '.join(missing)} of job "
            f"{manifest.get('job_id') or 'without Slurm job id'}. Searched: {', '.join(searched)}. Check that the "
            "job ran with LD_PRELOAD of libdarshan.so, that its processes exited normally (a killed process leaves "
            "no log or a .darshan_partial one), and raise darshan.log_wait_s if the file system shows new files late."
        )


def locate(mode: str, manifest: dict | None, logs_dir: Path | None, checkpoint_dir: str | None,
           extra_dirs: list[Path], wait_s: float) -> tuple[list[FoundLog], dict]:
    """Find, read and attribute the logs of one mode's job.

    Returns the logs and a description of the search (directories, checkpoint
    directory, whether the job was traced) for the metrics step. Every entry
    that looks like a log is returned; those that cannot be used carry an error.

    Raises:
        ManifestError: the manifest lacks what locating the logs needs.
        MissingLogError: a process that wrote checkpoint data has no usable log.
    """
    info: dict = {"mode": mode, "traced": True, "searched": [], "source": "run" if logs_dir is None else "existing"}
    if manifest is not None:
        check_manifest(manifest)
    names = find_names(manifest, logs_dir, extra_dirs, wait_s, info)
    if names is None:
        info["traced"] = False
        info["checkpoint_dir"] = manifest.get("checkpoint_dir")
        return [], info
    if not names:
        log.warning("%s: no Darshan logs found in %s", mode, ", ".join(info["searched"]))

    found = read_found(names)
    if checkpoint_dir is None and manifest is not None:
        checkpoint_dir = manifest.get("checkpoint_dir")
    if manifest is not None:
        flag_other_jobs_by_manifest(found, manifest)
    else:
        flag_other_jobs_by_time(found, checkpoint_dir)
    if checkpoint_dir is None:
        checkpoint_dir = infer_checkpoint_dir(found)
        info["checkpoint_dir_inferred"] = True
    info["checkpoint_dir"] = checkpoint_dir

    if manifest is not None:
        attribute_from_manifest(found, manifest)
        check_required_logs(mode, found, manifest, info["searched"])
    else:
        infer_roles(found, checkpoint_dir)
    return found, info


def check_manifest(manifest: dict) -> None:
    """Check the parts of a manifest that locating the logs reads.

    Raises:
        ManifestError: naming the key that is missing or of the wrong type.
    """
    if not isinstance(manifest, dict):
        raise ManifestError(f"the manifest is a JSON {type(manifest).__name__}, not an object")
    for key in ("processes", "checkpoints"):
        if not isinstance(manifest.get(key, []), list):
            raise ManifestError(f"{key} in the manifest is not a list")
    for index, process in enumerate(manifest.get("processes", [])):
        if not isinstance(process, dict) or not isinstance(process.get("pid"), int):
            raise ManifestError(f"processes[{index}] in the manifest has no integer pid: {process!r}")
    darshan = manifest.get("darshan")
    if darshan is not None and not (isinstance(darshan, dict) and darshan.get("log_dir")):
        raise ManifestError("darshan in the manifest is neither null nor an object with log_dir")


def read_manifest(path: Path) -> dict:
    """Read a manifest file.

    Raises:
        ManifestError: the file cannot be read or is not valid JSON.
    """
    try:
        return json.loads(path.read_text())
    except OSError as error:
        raise ManifestError(f"cannot read the manifest {path}: {error.strerror or error}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ManifestError(f"the manifest {path} is not valid JSON ({error})") from None


def copy_logs(found: list[FoundLog], destination: Path) -> None:
    """Copy the usable logs into the results, keeping their names."""
    destination.mkdir(parents=True, exist_ok=True)
    for entry in found:
        if entry.usable:
            shutil.copy2(entry.name.path, destination / entry.name.path.name)


class OutputError(OSError):
    """Raised when an output cannot be written, with the path that failed."""


def write_outputs(found: list[FoundLog], info: dict, args: argparse.Namespace) -> pd.DataFrame:
    """Copy the logs and write processes.csv and the info JSON; return the process table.

    Raises:
        OutputError: naming the output that could not be written (a full or read-only file system).
    """
    table = process_table(found, info.get("checkpoint_dir"))
    info["logs"] = len(table)
    info["unreadable"] = int((table["error"] != "").sum())
    steps = [
        (args.output_dir, lambda: copy_logs(found, args.output_dir)),
        (args.processes, lambda: table.to_csv(args.processes, index=False)),
        (args.info, lambda: args.info.write_text(json.dumps(info, indent=1) + "\n")),
    ]
    for path, write in steps:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write()
        except OSError as error:
            raise OutputError(error.errno, f"cannot write {error.filename or path}: {error.strerror or error}") from error
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", required=True, help="checkpoint mode, for messages and the output")
    parser.add_argument("--manifest", type=Path, help="manifest.json written by the training job")
    parser.add_argument("--logs", type=Path, help="directory of existing logs, searched recursively, instead of a job's log directory")
    parser.add_argument("--checkpoint-dir", help="directory the job checkpointed into, as the logs name it")
    parser.add_argument("--extra-log-dir", type=Path, action="append", default=[], help="more directories to search, flat or <year>/<month>/<day>")
    parser.add_argument("--wait-s", type=float, default=0.0, help="seconds to wait for logs still being written")
    parser.add_argument("--output-dir", type=Path, required=True, help="where the logs are copied")
    parser.add_argument("--processes", type=Path, required=True, help="CSV table of the logs and their roles")
    parser.add_argument("--info", type=Path, required=True, help="JSON description of the search")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    if args.manifest is None and args.logs is None:
        parser.error("give --manifest (a job of this workflow) or --logs (existing logs), or both")
    try:
        manifest = read_manifest(args.manifest) if args.manifest else None
        found, info = locate(args.mode, manifest, args.logs, args.checkpoint_dir, args.extra_log_dir, args.wait_s)
    except ManifestError as error:
        log.error("%s: %s. Rerun the training job of this mode, or for existing logs fix or remove "
                  "existing_logs.%s.manifest", args.mode, error, args.mode)
        return 1
    except MissingLogError as error:
        log.error("%s", error)
        return 1

    try:
        table = write_outputs(found, info, args)
    except OutputError as error:
        log.error("%s: %s. Free space or fix the permissions on that file system, then run the workflow again",
                  args.mode, error.strerror)
        return 1
    log.info("%s: %d logs (%s)", args.mode, len(table), ", ".join(f"{r}: {n}" for r, n in table["role"].value_counts().items()) or "untraced")
    return 0


if __name__ == "__main__":
    sys.exit(main())
