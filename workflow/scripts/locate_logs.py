"""Find a job's Darshan logs, copy them into the results and name each process's role.

Non-MPI Darshan logs carry no rank of their own: every log says ``nprocs=1`` and
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

from darshan_logs import LogContents, LogName, LogReadError, read_logs, under_directory

log = logging.getLogger("locate_logs")

ROLES = ("launcher", "rank", "checkpoint_writer", "resource_tracker", "other")
LAUNCHER_EXE = re.compile(r"torchrun|torch\.distributed\.(run|launch)|(^|/)srun( |$)|(^|/)mpirun|(^|/)mpiexec")
TRACKER_EXE = re.compile(r"multiprocessing\.resource_tracker")
CHILD_EXE = re.compile(r"multiprocessing\.(spawn|forkserver)")
DCP_SHARD = re.compile(r"/__(?P<rank>\d+)_\d+\.distcp$")
COORDINATOR_FILE = re.compile(r"/\.metadata(\.tmp)?$")
CHECKPOINT_SUFFIXES = (".distcp", ".pt", ".pth", ".ckpt", ".safetensors")
STEP_DIRECTORY = re.compile(r"/step_\d+$")

COLUMNS = [
    "log", "source", "pid", "jobid", "role", "rank", "rank_source", "exe",
    "start_utc", "end_utc", "run_time_s", "darshan_version", "partial_modules",
    "checkpoint_bytes_written", "checkpoint_bytes_read", "error",
]


class MissingLogError(RuntimeError):
    """Raised when a process that wrote checkpoint data left no Darshan log."""


@dataclass
class FoundLog:
    """A log file that belongs to the job, with what could be read from it."""

    name: LogName
    contents: LogContents | None = None
    error: str | None = None
    role: str = "other"
    rank: int | None = None
    rank_source: str = ""


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
    """List every Darshan log name in the directories (final and ``_partial``)."""
    found = []
    for directory in directories:
        if not directory.is_dir():
            continue
        pattern = "**/*.darshan*" if recursive else "*.darshan*"
        for path in sorted(directory.glob(pattern)):
            name = LogName.parse(path)
            if name is not None and path.is_file():
                found.append(name)
            elif path.is_file():
                log.warning("ignoring %s: not a Darshan log file name (<user>_<exe>_id<jobid>-<pid>_...)", path)
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
    job id without a scheduler).
    """
    if own_directory is not None and own_directory in name.path.parents:
        return True
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
        names = [n for n in scan(search) if belongs_to_job(n, manifest, own_directory)]
        finished = {n.pid for n in names if not n.partial}
        waiting = [pid for pid in required if pid not in finished]
        if not waiting or time.monotonic() >= deadline:
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
    readable = [entry for entry in found if entry.contents is not None]
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
        if entry.contents is None:
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

def utc_text(seconds: float | None) -> str:
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
    table["rank"] = table["rank"].astype("Int64")
    role_order = {role: index for index, role in enumerate(ROLES)}
    return table.sort_values(by=["role", "rank", "pid"], key=lambda c: c.map(role_order) if c.name == "role" else c).reset_index(drop=True)


def read_found(names: list[LogName]) -> list[FoundLog]:
    """Read every log; a damaged one keeps its row with the error instead of vanishing."""
    contents = read_logs([name.path for name in names if not name.partial])
    found = []
    for name in names:
        entry = FoundLog(name=name)
        if name.partial:
            entry.error = "unfinished log (.darshan_partial): the process did not shut Darshan down"
        elif isinstance(contents[name.path], LogReadError):
            entry.error = str(contents[name.path])
            log.error("%s", entry.error)
        else:
            entry.contents = contents[name.path]
        found.append(entry)
    return found


def locate(mode: str, manifest: dict | None, logs_dir: Path | None, checkpoint_dir: str | None,
           extra_dirs: list[Path], wait_s: float) -> tuple[list[FoundLog], dict]:
    """Find, read and attribute the logs of one mode's job.

    Returns the logs and a description of the search (directories, checkpoint
    directory, whether the job was traced) for the metrics step.

    Raises:
        MissingLogError: a process that wrote checkpoint data has no log.
    """
    info: dict = {"mode": mode, "traced": True, "searched": [], "source": "run" if logs_dir is None else "existing"}
    if logs_dir is not None:
        names = scan([logs_dir], recursive=True)
        if manifest is not None:
            names = [n for n in names if belongs_to_job(n, manifest, logs_dir)]
        info["searched"] = [str(logs_dir)]
    else:
        assert manifest is not None
        if manifest.get("darshan") is None:
            info["traced"] = False
            info["checkpoint_dir"] = manifest.get("checkpoint_dir")
            return [], info
        own = Path(manifest["darshan"]["log_dir"])
        start = dt.datetime.fromisoformat(manifest["start_utc"].replace("Z", "+00:00"))
        end = dt.datetime.fromisoformat(manifest["end_utc"].replace("Z", "+00:00"))
        search = [own] + dated_directories(own, start, end)
        for extra in extra_dirs:
            search += [extra] + dated_directories(extra, start, end)
        info["searched"] = [str(path) for path in search]
        names = wait_for_logs(search, manifest, own, wait_s)

    found = read_found(names)
    if checkpoint_dir is None and manifest is not None:
        checkpoint_dir = manifest.get("checkpoint_dir")
    if checkpoint_dir is None:
        checkpoint_dir = infer_checkpoint_dir(found)
        info["checkpoint_dir_inferred"] = True
    info["checkpoint_dir"] = checkpoint_dir

    if manifest is not None:
        attribute_from_manifest(found, manifest)
        missing = {pid: what for pid, what in required_processes(manifest).items()
                   if not any(e.name.pid == pid and e.contents is not None for e in found)}
        if missing:
            described = ", ".join(f"{what} (PID {pid})" for pid, what in missing.items())
            raise MissingLogError(
                f"{mode}: no readable Darshan log for {described} of job {manifest.get('job_id') or 'without Slurm job id'}. "
                f"Searched: {', '.join(info['searched'])}. Check that the job ran with LD_PRELOAD of libdarshan.so, "
                "that its processes exited normally (a killed process leaves no log), and raise darshan.log_wait_s "
                "if the file system shows new files late."
            )
    else:
        infer_roles(found, checkpoint_dir)
    return found, info


def copy_logs(found: list[FoundLog], destination: Path) -> None:
    """Copy the finished logs into the results, keeping their names."""
    destination.mkdir(parents=True, exist_ok=True)
    for entry in found:
        if entry.contents is not None:
            shutil.copy2(entry.name.path, destination / entry.name.path.name)


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
    manifest = json.loads(args.manifest.read_text()) if args.manifest else None
    try:
        found, info = locate(args.mode, manifest, args.logs, args.checkpoint_dir, args.extra_log_dir, args.wait_s)
    except MissingLogError as error:
        log.error("%s", error)
        return 1

    copy_logs(found, args.output_dir)
    table = process_table(found, info.get("checkpoint_dir"))
    args.processes.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.processes, index=False)
    info["logs"] = len(table)
    info["unreadable"] = int((table["error"] != "").sum())
    args.info.write_text(json.dumps(info, indent=1) + "\n")
    log.info("%s: %d logs (%s)", args.mode, len(table), ", ".join(f"{r}: {n}" for r, n in table["role"].value_counts().items()) or "untraced")
    return 0


if __name__ == "__main__":
    sys.exit(main())
