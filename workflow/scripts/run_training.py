"""Run one checkpoint mode's training job and write its manifest.

The Snakemake rule calls::

    python workflow/scripts/run_training.py --mode MODE --settings JSON_OR_@FILE --output-dir DIR

This wrapper prepares the output and checkpoint directories, builds the job's
environment (with the Darshan runtime preloaded when tracing is on), starts the ranks
of ``train_checkpoint.py`` with ``torchrun`` or ``srun``, waits for them, and merges the
ranks' records into ``DIR/manifest.json``. The Darshan variables go only into the
launcher's environment; this process runs untraced.

When the job fails, each checkpoint it left incomplete gets a ``<name>.incomplete``
marker beside it and the error names the rank, checkpoint and path each rank was
in. After a successful job, ``checkpoint.keep`` decides which of this run's
checkpoints stay; nothing outside ``<checkpoint.root>/<run_id>/<mode>/`` is touched.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import zlib
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from darshan_runtime import DarshanRuntime, job_environment, render_config_file

log = logging.getLogger("run_training")

MODES = ("torch_save", "dcp", "dcp_async", "dcp_async_process")
LAUNCHERS = ("auto", "torchrun", "srun")
KEEP_CHOICES = ("all", "last", "none")
# A checkpoint of this workflow directly inside the mode's checkpoint directory.
CHECKPOINT_ENTRY = re.compile(r"^step_(?P<step>\d+)(\.pt)?$")
INCOMPLETE_SUFFIX = ".incomplete"
# Tensor names shown in an integrity mismatch verdict.
MISMATCH_NAMES_SHOWN = 5
PAGE_CACHE_METHOD = ("posix_fadvise(POSIX_FADV_DONTNEED) by each rank on the files it restores from, "
                     "checked with mincore(2). It affects the page cache of the rank's node, not a file server's cache")
TRAINING_SCRIPT = Path(__file__).resolve().parent / "train_checkpoint.py"
MANIFEST_VERSION = 1

# Slurm ranks rendezvous at MASTER_PORT on the first node. Ports in [20000, 32768)
# stay below the Linux default ephemeral port range (32768-60999), so an outgoing
# connection on that node does not take the port by chance.
SLURM_PORT_BASE = 20000
SLURM_PORT_COUNT = 12768

# Seconds the launcher gets to stop its ranks after SIGTERM before it is killed.
LAUNCHER_STOP_TIMEOUT_S = 30


class TrainingJobError(RuntimeError):
    """Raised when the job cannot start or did not finish every rank and checkpoint."""


def utc_now() -> str:
    """Return the current UTC time as ISO 8601 with a ``Z`` suffix."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def load_settings(value: str) -> dict:
    """Parse ``--settings``: a JSON object, or ``@path`` to a file that contains one."""
    if value.startswith("@"):
        path = Path(value[1:])
        try:
            text = path.read_text()
        except OSError as error:
            raise TrainingJobError(f"cannot read the settings file {path}: {error}") from error
    else:
        text = value
    try:
        settings = json.loads(text)
    except json.JSONDecodeError as error:
        raise TrainingJobError(f"--settings is not valid JSON ({error}): {text[:200]!r}") from error
    if not isinstance(settings, dict):
        raise TrainingJobError(f"--settings must be a JSON object, not {type(settings).__name__}")
    return settings


def check_settings(settings: Mapping[str, Any], mode: str) -> None:
    """Reject settings that would fail only after the ranks have started."""
    for key in ("model", "training", "launch", "checkpoint"):
        if not isinstance(settings.get(key), dict):
            raise TrainingJobError(f"settings key {key!r} is missing or not an object")
    if settings.get("mode") not in (None, mode):
        raise TrainingJobError(f"--mode is {mode} but settings.mode is {settings['mode']}; they must agree")

    launch = settings["launch"]
    for key in ("nodes", "ranks_per_node"):
        if not isinstance(launch.get(key), int) or launch[key] < 1:
            raise TrainingJobError(f"launch.{key} is {launch.get(key)!r}; it must be an integer of at least 1")
    if launch.get("launcher", "auto") not in LAUNCHERS:
        raise TrainingJobError(f"launch.launcher is {launch['launcher']!r}; use one of {', '.join(LAUNCHERS)}")

    checkpoint_dir = settings["checkpoint"].get("dir")
    if not checkpoint_dir or not Path(checkpoint_dir).is_absolute():
        raise TrainingJobError(f"checkpoint.dir is {checkpoint_dir!r}; it must be an absolute path")
    keep = settings["checkpoint"].get("keep", "all")
    if keep not in KEEP_CHOICES:
        raise TrainingJobError(f"checkpoint.keep is {keep!r}; use one of {', '.join(KEEP_CHOICES)}")


def prepare_output_dir(output_dir: Path) -> None:
    """Create ``DIR`` and ``DIR/ranks``, removing rank records, progress files and a manifest of an earlier run.

    A rank record left from an earlier run would hide a rank that failed this time.
    """
    ranks_dir = output_dir / "ranks"
    ranks_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*ranks_dir.glob("rank*.json"), output_dir / "manifest.json"]:
        if stale.is_file():
            log.info("removing %s from an earlier run", stale)
            stale.unlink()


def clear_checkpoints(checkpoint_dir: Path) -> list[str]:
    """Create the checkpoint directory and remove the ``step_*`` entries of an earlier run.

    Only ``step_*`` entries directly inside this mode's checkpoint directory are
    removed (with the ``.incomplete`` markers of a failed run), and anything else
    there is left alone. Returns the names removed.
    """
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    removed = []
    for entry in sorted(checkpoint_dir.glob("step_*")):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
        removed.append(entry.name)
    if removed:
        log.info("removed %d checkpoints of an earlier run from %s", len(removed), checkpoint_dir)
    return removed


def prepare_darshan(darshan: Mapping[str, Any] | None, output_dir: Path) -> tuple[dict[str, str], dict | None]:
    """Write the Darshan config file and return the tracing variables and their manifest entry.

    Returns empty variables and None when tracing is off (``darshan`` is null).
    Earlier ``.darshan`` logs in ``DIR/darshan-logs`` are removed, because the
    analysis reads every log in that directory as part of this job.
    """
    if darshan is None:
        return {}, None

    runtime_settings = dict(darshan["runtime"])
    library = Path(runtime_settings["library"])
    if not library.is_file():
        raise TrainingJobError(
            f"the Darshan runtime library {library} does not exist; set darshan.library in "
            "config/config.yaml to an installed libdarshan.so, or darshan.enabled to false"
        )
    runtime = DarshanRuntime(**{**runtime_settings, "library": library})

    log_dir = (output_dir / "darshan-logs").resolve()
    log_dir.mkdir(parents=True, exist_ok=True)
    for stale in sorted(log_dir.rglob("*.darshan*")):
        if stale.is_file():
            log.info("removing Darshan log %s from an earlier run", stale)
            stale.unlink()

    config_file = (output_dir / "darshan.conf").resolve()
    config_file.write_text(render_config_file(int(darshan["max_records"]), list(darshan["modules"]), bool(darshan["dxt"])))
    variables = job_environment(runtime, log_dir, config_file, bool(darshan["dxt"]))
    entry = {"runtime": runtime.as_dict(), "log_dir": str(log_dir), "config_file": str(config_file),
             "environment": dict(variables)}
    return variables, entry


def choose_launcher(requested: str, environ: Mapping[str, str]) -> str:
    """Resolve ``launch.launcher``: ``auto`` is srun inside a Slurm job with srun on PATH, else torchrun."""
    if requested == "auto":
        in_slurm_job = bool(environ.get("SLURM_JOB_ID"))
        has_srun = shutil.which("srun", path=environ.get("PATH")) is not None
        return "srun" if in_slurm_job and has_srun else "torchrun"
    if requested == "srun" and shutil.which("srun", path=environ.get("PATH")) is None:
        raise TrainingJobError("launch.launcher is srun but srun is not on PATH; run inside a Slurm allocation "
                               "or set launch.launcher to torchrun")
    return requested


def slurm_master_address(environ: Mapping[str, str]) -> str:
    """Return the first host of the Slurm job, where rank 0 runs with srun's block distribution.

    Uses ``scontrol show hostnames $SLURM_JOB_NODELIST``, then ``SLURMD_NODENAME``,
    then this host's name.
    """
    nodelist = environ.get("SLURM_JOB_NODELIST")
    if nodelist and shutil.which("scontrol", path=environ.get("PATH")):
        try:
            completed = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True,
                                       text=True, timeout=30, check=True)
            hosts = completed.stdout.split()
            if hosts:
                return hosts[0]
        except (OSError, subprocess.SubprocessError) as error:
            log.warning("scontrol show hostnames %s failed (%s); using SLURMD_NODENAME or this host", nodelist, error)
    return environ.get("SLURMD_NODENAME") or socket.gethostname()


def slurm_master_port(job_id: str, output_dir: Path) -> int:
    """Return the rendezvous port of a Slurm job's ranks.

    The port depends on the job id and the output directory, so that the modes that
    one Slurm allocation runs side by side get different ports.
    """
    key = f"{job_id}:{output_dir.resolve()}".encode()
    return SLURM_PORT_BASE + zlib.crc32(key) % SLURM_PORT_COUNT


def training_arguments(mode: str, settings_file: Path, output_dir: Path) -> list[str]:
    """Return the arguments of ``train_checkpoint.py`` for every rank."""
    return ["--mode", mode, "--settings-file", str(settings_file), "--output-dir", str(output_dir)]


def build_launch_command(launcher: str, nodes: int, ranks_per_node: int, arguments: list[str],
                         python: str = sys.executable, script: Path = TRAINING_SCRIPT) -> list[str]:
    """Build the command line that starts every rank of the job.

    torchrun starts ``ranks_per_node`` ranks on this machine with a c10d rendezvous on
    a free loopback port, so concurrent jobs do not collide. srun starts one task per
    rank; ``--kill-on-bad-exit`` ends the others when one fails.
    """
    world_size = nodes * ranks_per_node
    if launcher == "torchrun":
        if nodes != 1:
            raise TrainingJobError(
                f"launch.nodes is {nodes} but torchrun starts ranks on this machine only; "
                "set launch.launcher to srun (inside a Slurm allocation) or launch.nodes to 1"
            )
        return [python, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(ranks_per_node),
                "--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:0", "--local-addr", "127.0.0.1",
                "--max-restarts", "0", str(script), *arguments]
    if launcher == "srun":
        return ["srun", "--ntasks", str(world_size), "--ntasks-per-node", str(ranks_per_node),
                "--nodes", str(nodes), "--kill-on-bad-exit=1", "--overlap", python, str(script), *arguments]
    raise TrainingJobError(f"unknown launcher {launcher!r}; use torchrun or srun")


def launch_variables(launcher: str, environ: Mapping[str, str], output_dir: Path) -> dict[str, str]:
    """Return the rendezvous variables the launcher's environment needs beside the inherited ones.

    srun tasks get MASTER_ADDR and MASTER_PORT. torchrun ranks run on one machine, so
    gloo is bound to the loopback interface unless GLOO_SOCKET_IFNAME is already set.
    """
    if launcher == "srun":
        job_id = environ.get("SLURM_JOB_ID")
        if not job_id:
            raise TrainingJobError("launch.launcher is srun but SLURM_JOB_ID is not set; run inside a Slurm allocation")
        return {"MASTER_ADDR": slurm_master_address(environ), "MASTER_PORT": str(slurm_master_port(job_id, output_dir))}
    if environ.get("GLOO_SOCKET_IFNAME"):
        return {}
    return {"GLOO_SOCKET_IFNAME": "lo"}


def child_environment(environ: Mapping[str, str], launch: Mapping[str, str],
                      darshan: Mapping[str, str]) -> dict[str, str]:
    """Merge the launch and Darshan variables into a copy of ``environ``.

    The Darshan library goes first in an existing ``LD_PRELOAD``.
    """
    env = dict(environ)
    env.update(launch)
    for name, value in darshan.items():
        if name == "LD_PRELOAD" and environ.get("LD_PRELOAD"):
            value = f"{value}:{environ['LD_PRELOAD']}"
        env[name] = value
    return env


def run_launcher(command: list[str], env: Mapping[str, str]) -> tuple[int, int]:
    """Start the launcher, wait for it and return its PID and exit code.

    When this wrapper is interrupted (SIGINT, or SIGTERM from Snakemake), the launcher
    gets SIGTERM and then, after ``LAUNCHER_STOP_TIMEOUT_S``, SIGKILL.
    """
    log.info("starting: %s", " ".join(command))
    process = subprocess.Popen(command, env=dict(env))
    try:
        return process.pid, process.wait()
    finally:
        if process.poll() is None:
            log.error("stopping launcher %d because this job was interrupted", process.pid)
            process.terminate()
            try:
                process.wait(timeout=LAUNCHER_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def read_rank_records(ranks_dir: Path, world_size: int) -> tuple[dict[int, dict], list[int]]:
    """Read ``rank<k>.json`` of every rank and return the records by rank and the missing ranks."""
    records, missing = {}, []
    for rank in range(world_size):
        path = ranks_dir / f"rank{rank}.json"
        if path.is_file():
            records[rank] = json.loads(path.read_text())
        else:
            missing.append(rank)
    return records, missing


def merge_processes(launcher_pid: int, host: str, records: Mapping[int, dict]) -> list[dict]:
    """List the job's processes with their roles: the launcher, each rank and each rank's helpers.

    Under Darshan each of them writes its own log, named after its PID.
    """
    processes = [{"pid": launcher_pid, "ppid": os.getpid(), "host": host, "role": "launcher", "rank": None}]
    for rank, record in sorted(records.items()):
        processes.append({"pid": record["pid"], "ppid": record["ppid"], "host": record["host"],
                          "role": "rank", "rank": rank})
        for other in record.get("other_pids", []):
            entry = {"pid": other["pid"], "ppid": other.get("ppid", record["pid"]),
                     "host": record["host"], "role": other["role"], "rank": rank}
            if "exit_code" in other:
                entry["exit_code"] = other["exit_code"]
            processes.append(entry)
    return processes


def merge_checkpoints(records: Mapping[int, dict]) -> list[dict]:
    """Merge the ranks' per-checkpoint timings with rank 0's list of files on disk.

    Raises:
        TrainingJobError: the ranks do not list the same checkpoints, or rank 0
            has no file list for one.
    """
    ranks = sorted(records)
    steps_by_rank = {rank: [item["step"] for item in records[rank]["checkpoints"]] for rank in ranks}
    steps = steps_by_rank[ranks[0]]
    for rank, rank_steps in steps_by_rank.items():
        if rank_steps != steps:
            raise TrainingJobError(f"rank {rank} saved checkpoints at steps {rank_steps} but rank {ranks[0]} "
                                   f"at steps {steps}; see the ranks' log output")

    merged = []
    for index, step in enumerate(steps):
        per_rank = [records[rank]["checkpoints"][index] for rank in ranks]
        file_list = records[0]["checkpoints"][index].get("files")
        if file_list is None:
            raise TrainingJobError(f"rank 0 record has no file list for checkpoint step {step}")
        bytes_by_rank: dict[str, int] = {}
        for item in file_list:
            # NOTE: a file with an unknown owner (rank null) counts in "bytes" only.
            if item["rank"] is not None:
                bytes_by_rank[str(item["rank"])] = bytes_by_rank.get(str(item["rank"]), 0) + item["bytes"]
        blocking_s = [item["blocking_s"] for item in per_rank]
        completion_s = [item["completion_s"] for item in per_rank]
        merged.append({
            "step": step,
            "path": per_rank[0]["path"],
            "start_utc": min(item["start_utc"] for item in per_rank),
            "end_utc": max(item["end_utc"] for item in per_rank),
            "blocking_s": blocking_s,
            "blocking_max_s": max(blocking_s),
            "completion_s": completion_s,
            "completion_max_s": max(completion_s),
            "bytes": sum(item["bytes"] for item in file_list),
            "files": len(file_list),
            "file_list": file_list,
            "bytes_by_rank": bytes_by_rank,
            "complete": all(item.get("complete", True) for item in per_rank),
        })
    return merged


# ---- restore, integrity and staging ---------------------------------------------------

def merge_restore(records: Mapping[int, dict]) -> dict | None:
    """Merge the ranks' restore of the last checkpoint: method, page cache, load time per rank and bytes read.

    ``bytes`` counts the checkpoint files each rank read, so DCP's global
    ``.metadata``, which every rank reads, counts once per rank.
    """
    restores = {rank: record.get("restore") for rank, record in sorted(records.items())}
    if not all(restores.values()):
        return None
    first = restores[min(restores)]
    load_s = [restore["load_s"] for restore in restores.values()]
    reading = {rank: restore["page_cache"] for rank, restore in restores.items() if restore["page_cache"]["files"]}
    return {
        "step": first["step"],
        "path": first["path"],
        "method": first["method"],
        "load_s": load_s,
        "load_max_s": max(load_s),
        "bytes": sum(restore["bytes"] for restore in restores.values()),
        "bytes_by_rank": {str(rank): restore["bytes"] for rank, restore in restores.items()},
        "files_by_rank": {str(rank): restore["files"] for rank, restore in restores.items()},
        "page_cache": {
            "method": PAGE_CACHE_METHOD,
            "dropped": all(cache["dropped"] for cache in reading.values()),
            "resident_bytes_before": sum(cache["resident_bytes_before"] for cache in reading.values()),
            "resident_bytes_after": sum(cache["resident_bytes_after"] for cache in reading.values()),
            "fsync_first": any(cache["fsync_first"] for cache in reading.values()),
            "errors": [error for cache in reading.values() for error in cache["errors"]],
        },
    }


def merge_integrity(records: Mapping[int, dict]) -> tuple[str, dict | None]:
    """Return the integrity verdict of the last checkpoint and its details.

    The verdict is ``ok``, ``mismatch (N tensors differ: names...)`` with each name
    followed by its rank, or ``not checked: <reason>``.
    """
    restores = {rank: record.get("restore") for rank, record in sorted(records.items())}
    if not all(restores.values()):
        return "not checked: no checkpoint was restored", None
    checked = {rank: restore["integrity"] for rank, restore in restores.items() if restore["integrity"]["checked"]}
    if not checked:
        return "not checked: no rank kept the state of the last save", None
    differing = [f"{name} (rank {rank})" for rank, result in checked.items() for name in result["differing"]]
    replicated = [f"{name} (rank {rank})" for rank, result in checked.items()
                  for name in result.get("replicated_buffers_from_other_rank", [])]
    detail = {
        "step": restores[min(restores)]["step"],
        "ranks_checked": sorted(checked),
        "tensors_checked": sum(result["tensors_checked"] for result in checked.values()),
        "differing": differing,
        "replicated_buffers_from_other_rank": replicated,
    }
    verdict = integrity_text(differing)
    if verdict == "ok" and replicated:
        verdict = (f"ok ({len(replicated)} unsharded buffers, such as BatchNorm statistics, hold the copy "
                   "of the rank that DCP saved them from)")
    return verdict, detail


def integrity_text(differing: list[str]) -> str:
    """Return ``ok`` or ``mismatch (N tensors differ: names...)`` for the manifest and the table."""
    if not differing:
        return "ok"
    shown = ", ".join(differing[:MISMATCH_NAMES_SHOWN])
    more = ", ..." if len(differing) > MISMATCH_NAMES_SHOWN else ""
    return f"mismatch ({len(differing)} tensors differ: {shown}{more})"


def merge_staging(records: Mapping[int, dict]) -> dict | None:
    """Return rank 0's description of async staging, with whether each rank's staging memory was pinned."""
    staging = records[min(records)].get("staging")
    if staging is None:
        return None
    return {**staging, "pinned_memory_by_rank": {str(rank): (record.get("staging") or {}).get("pinned_memory")
                                                 for rank, record in sorted(records.items())}}


# ---- failed jobs ------------------------------------------------------------------------

def read_progress(ranks_dir: Path, world_size: int) -> dict[int, dict]:
    """Read ``rank<k>.progress.json`` of each rank that wrote one."""
    progress = {}
    for rank in range(world_size):
        path = ranks_dir / f"rank{rank}.progress.json"
        try:
            progress[rank] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
    return progress


def describe_rank(mode: str, rank: int, progress: dict | None) -> str | None:
    """Describe what a rank of a failed job was doing when it stopped, or return None if it finished."""
    if progress is None:
        return f"rank {rank} left no progress file, so it stopped before training began"
    phase, pid = progress.get("phase"), progress.get("pid")
    where = f"{mode} checkpoint step {progress.get('step')} at {progress.get('checkpoint')}"
    if phase == "finished":
        return None
    if phase == "saving":
        return (f"rank {rank} (PID {pid}) stopped while saving {where} without reporting an error, so it was "
                "killed (by a signal, the out-of-memory killer or the launcher)")
    if phase == "restoring":
        return (f"rank {rank} (PID {pid}) stopped while restoring {where} without reporting an error, so it was "
                "killed (by a signal, the out-of-memory killer or the launcher)")
    if phase in ("failed", "terminated"):
        during = progress.get("during")
        context = f" while {during} {where}" if during in ("saving", "restoring") else f" during {during}"
        return f"rank {rank} (PID {pid}) {phase}{context}: {progress.get('error')}"
    return f"rank {rank} (PID {pid}) stopped during {phase} without reporting an error"


def find_incomplete_checkpoints(mode: str, checkpoint_dir: Path, progress: Mapping[int, dict]) -> list[dict]:
    """List this run's checkpoints on disk that did not complete, each with its path, step and the reason.

    A DCP checkpoint is complete once the coordinator wrote its ``.metadata``, which
    it does after every rank's data is written. A torch.save file is complete once
    rank 0 recorded its save as done.
    """
    last_complete_step = (progress.get(0) or {}).get("last_complete_step") or 0
    incomplete = []
    if not checkpoint_dir.is_dir():
        return incomplete
    for entry in sorted(checkpoint_dir.iterdir()):
        match = CHECKPOINT_ENTRY.match(entry.name)
        if match is None:
            continue
        step = int(match["step"])
        if mode == "torch_save":
            if step > last_complete_step:
                incomplete.append({"path": entry.name, "step": step,
                                   "reason": f"rank 0 did not record the save as done (last done: step {last_complete_step})"})
        elif not (entry / ".metadata").is_file():
            incomplete.append({"path": entry.name, "step": step, "reason": "no .metadata: the coordinator never finished it"})
    return incomplete


def mark_incomplete(checkpoint_dir: Path, incomplete: list[dict], mode: str, run_id: str | None) -> list[Path]:
    """Write a ``<checkpoint>.incomplete`` JSON marker beside each incomplete checkpoint and return the markers.

    On a full file system the JSON cannot be written, so the marker is left empty,
    which needs no data block; the reason is in the job's error either way.
    """
    markers = []
    for item in incomplete:
        marker = checkpoint_dir / f"{item['path']}{INCOMPLETE_SUFFIX}"
        try:
            write_json_atomically(marker, {**item, "complete": False, "mode": mode, "run_id": run_id,
                                           "marked_utc": utc_now()})
        except OSError as error:
            log.error("could not write the marker %s (%s); leaving it empty", marker, error)
            try:
                marker.touch()
            except OSError as touch_error:
                log.error("could not create the marker %s either: %s", marker, touch_error)
                item["reason"] += f"; not marked: {touch_error.strerror}"
                continue
        markers.append(marker)
    return markers


def free_space_text(directory: Path) -> str:
    """Describe the free space of the file system that contains ``directory``, for failure messages."""
    existing = directory if directory.exists() else directory.parent
    try:
        usage = shutil.disk_usage(existing)
    except OSError as error:
        return f"free space of {existing} unknown ({error.strerror})"
    return f"its file system has {usage.free / 2**20:,.1f} MiB free of {usage.total / 2**20:,.1f} MiB"


def failure_message(mode: str, launcher: str, launcher_pid: int, exit_code: int, ranks_dir: Path, missing: list[int],
                    progress: Mapping[int, dict], world_size: int, checkpoint_dir: Path,
                    incomplete: list[dict]) -> str:
    """Build the error of a failed job: launcher exit, missing records, what each rank was doing, incomplete checkpoints."""
    missing_text = ", ".join(f"rank{rank}.json" for rank in missing) or "none"
    parts = [f"{mode} training job failed: {launcher} (PID {launcher_pid}) exited with code {exit_code}; "
             f"missing rank records in {ranks_dir}: {missing_text}"]
    if missing:
        parts += [text for rank in range(world_size) if (text := describe_rank(mode, rank, progress.get(rank)))]
    if incomplete:
        listed = ", ".join(f"{checkpoint_dir / item['path']} ({item['reason']})" for item in incomplete)
        parts.append(f"incomplete checkpoints, each marked with a {INCOMPLETE_SUFFIX} file beside it: {listed}; "
                     "the next run of this mode removes them")
    parts.append(f"checkpoint directory {checkpoint_dir}: {free_space_text(checkpoint_dir)}")
    return "; ".join(parts)


# ---- retention -----------------------------------------------------------------------------

def apply_retention(checkpoint_dir: Path, checkpoints: list[dict], keep: str) -> dict:
    """Delete the checkpoints of this run that ``checkpoint.keep`` does not keep, and mark each entry ``retained``.

    ``all`` keeps every one, ``last`` the last one, ``none`` none. Only entries the
    manifest lists, named ``step_<k>[.pt]`` and directly inside ``checkpoint_dir``,
    are removed. A symbolic link is removed, never followed.

    Raises:
        TrainingJobError: an entry is not a checkpoint of this directory, or cannot be removed.
    """
    if keep not in KEEP_CHOICES:
        raise TrainingJobError(f"checkpoint.keep is {keep!r}; use one of {', '.join(KEEP_CHOICES)}")
    kept_count = {"all": len(checkpoints), "last": 1, "none": 0}[keep]
    removed, kept = [], []
    for index, checkpoint in enumerate(checkpoints):
        retained = index >= len(checkpoints) - kept_count
        checkpoint["retained"] = retained
        if retained:
            kept.append(checkpoint["path"])
            continue
        target = checkpoint_dir / checkpoint["path"]
        if target.parent != checkpoint_dir or not CHECKPOINT_ENTRY.match(target.name):
            raise TrainingJobError(f"cannot delete {target}: checkpoint.keep deletes only step_<k> entries "
                                   f"directly inside {checkpoint_dir}, so check the checkpoint paths of the ranks' records")
        try:
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
        except OSError as error:
            raise TrainingJobError(f"checkpoint.keep is {keep} but {target} could not be removed: {error}; "
                                   "check its permissions or set checkpoint.keep to all") from error
        removed.append(checkpoint["path"])
    if removed:
        log.info("checkpoint.keep %s: removed %s from %s", keep, ", ".join(removed), checkpoint_dir)
    return {"keep": keep, "removed": removed, "kept": kept}


def package_versions(rank_versions: Mapping[str, str | None],
                     darshan_entry: Mapping[str, Any] | None) -> dict[str, str | None]:
    """Return the versions of Python, torch, torchvision, CUDA, the Darshan runtime and PyDarshan.

    torch, torchvision and CUDA come from rank 0, as the job ran them (with the build
    suffix such as ``+cu130``), so this wrapper does not import torch.
    """
    try:
        pydarshan = importlib.metadata.version("darshan")
    except importlib.metadata.PackageNotFoundError:
        pydarshan = None
    return {
        "python": platform.python_version(),
        "torch": rank_versions.get("torch"),
        "torchvision": rank_versions.get("torchvision"),
        "cuda": rank_versions.get("cuda"),
        "darshan_runtime": darshan_entry["runtime"]["version"] if darshan_entry else None,
        "pydarshan": pydarshan,
    }


def write_json_atomically(path: Path, data: Any) -> None:
    """Write JSON to a temporary file and rename it, so readers never see a partial file."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def check_local_cores(launcher: str, world_size: int, cores: int | None, oversubscribe: bool) -> None:
    """Reject a torchrun job with more ranks than the cores Snakemake gave it, unless oversubscribe allows it.

    Ranks that share cores wait for each other, and every time the job measures
    includes that wait.

    Raises:
        TrainingJobError: naming the ranks, the cores and the settings that fix it.
    """
    if launcher != "torchrun" or cores is None or oversubscribe or world_size <= cores:
        return
    raise TrainingJobError(
        f"launch.nodes x launch.ranks_per_node is {world_size} ranks, but this job may use {cores} cores "
        "(--cores or the profile's cores). Lower launch.ranks_per_node, run with more cores, or set "
        "launch.oversubscribe: true to accept ranks that compete for cores."
    )


def run_job(mode: str, settings: dict, output_dir: Path, environ: Mapping[str, str], cores: int | None = None) -> dict:
    """Prepare, launch and merge one training job, and return the manifest written to ``DIR/manifest.json``.

    Raises:
        TrainingJobError: the settings are invalid, the launcher failed (the checkpoints
            it left incomplete are then marked), or a rank's record or checkpoint is missing.
    """
    check_settings(settings, mode)
    output_dir = output_dir.resolve()
    launch = settings["launch"]
    world_size = launch["nodes"] * launch["ranks_per_node"]
    checkpoint_dir = Path(settings["checkpoint"]["dir"])
    launcher = choose_launcher(launch.get("launcher", "auto"), environ)
    check_local_cores(launcher, world_size, cores, bool(launch.get("oversubscribe", False)))

    prepare_output_dir(output_dir)
    clear_checkpoints(checkpoint_dir)
    darshan_variables, darshan_entry = prepare_darshan(settings.get("darshan"), output_dir)
    settings_file = output_dir / "job_settings.json"
    write_json_atomically(settings_file, settings)

    command = build_launch_command(launcher, launch["nodes"], launch["ranks_per_node"],
                                   training_arguments(mode, settings_file, output_dir))
    launch_env = launch_variables(launcher, environ, output_dir)
    env = child_environment(environ, launch_env, darshan_variables)
    if darshan_entry:
        darshan_entry["environment"]["LD_PRELOAD"] = env["LD_PRELOAD"]

    start_utc = utc_now()
    launcher_pid, exit_code = run_launcher(command, env)
    end_utc = utc_now()
    ranks_dir = output_dir / "ranks"
    records, missing = read_rank_records(ranks_dir, world_size)
    if exit_code != 0 or missing:
        progress = read_progress(ranks_dir, world_size)
        incomplete = find_incomplete_checkpoints(mode, checkpoint_dir, progress)
        mark_incomplete(checkpoint_dir, incomplete, mode, settings.get("run_id"))
        raise TrainingJobError(failure_message(mode, launcher, launcher_pid, exit_code, ranks_dir, missing, progress,
                                               world_size, checkpoint_dir, incomplete))

    host = socket.gethostname()
    checkpoints = merge_checkpoints(records)
    integrity, integrity_detail = merge_integrity(records)
    if integrity.startswith("mismatch"):
        log.warning("%s: the restored last checkpoint differs from the state its save was asked for: %s", mode, integrity)
    retention = apply_retention(checkpoint_dir, checkpoints, settings["checkpoint"].get("keep", "all"))
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "mode": mode,
        "run_id": settings.get("run_id"),
        "job_id": environ.get("SLURM_JOB_ID") or None,
        "host": host,
        "launcher": launcher,
        "start_utc": start_utc,
        "end_utc": end_utc,
        "world_size": world_size,
        "nodes": launch["nodes"],
        # Cores Snakemake gave a local job; more ranks than cores means the ranks shared cores.
        "cores": cores,
        "oversubscribed": launcher == "torchrun" and cores is not None and world_size > cores,
        "device": records[0]["device"],
        "backend": records[0]["backend"],
        "checkpoint_dir": str(checkpoint_dir),
        "launch_command": command,
        "launch_environment": launch_env,
        "processes": merge_processes(launcher_pid, host, records),
        "checkpoints": checkpoints,
        "restore": merge_restore(records),
        "integrity": integrity,
        "integrity_detail": integrity_detail,
        "staging": merge_staging(records),
        "retention": retention,
        "darshan": darshan_entry,
        "versions": package_versions(records[0].get("versions", {}), darshan_entry),
        "settings": settings,
    }
    write_json_atomically(output_dir / "manifest.json", manifest)
    log.info("%s: %d checkpoints, integrity of the last one: %s, manifest %s", mode, len(manifest["checkpoints"]),
             integrity, output_dir / "manifest.json")
    return manifest


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line of the Snakemake rule."""
    parser = argparse.ArgumentParser(description="Run one checkpoint mode's training job and write its manifest.")
    parser.add_argument("--mode", required=True, choices=MODES, help="checkpoint mode")
    parser.add_argument("--settings", required=True,
                        help="job settings as a JSON object, or @path to a JSON file")
    parser.add_argument("--output-dir", required=True, type=Path,
                        help="job output directory for manifest.json, ranks/ and darshan-logs/")
    parser.add_argument("--cores", type=int,
                        help="cores Snakemake gave this job; a torchrun job needs one per rank")
    return parser.parse_args(argv)


def _stop_on_sigterm(signal_number: int, _frame: Any) -> None:
    raise SystemExit(128 + signal_number)


def main(argv: list[str] | None = None) -> int:
    """Run the job; return 0 on success and 1 with an error message otherwise."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    arguments = parse_arguments(argv)
    # SIGTERM raises SystemExit, so run_launcher stops the launcher on its way out.
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        settings = load_settings(arguments.settings)
        run_job(arguments.mode, settings, arguments.output_dir, os.environ, arguments.cores)
    except TrainingJobError as error:
        log.error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
