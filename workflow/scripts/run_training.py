"""Run one checkpoint mode's training job and write its manifest.

The Snakemake rule calls::

    python workflow/scripts/run_training.py --mode MODE --settings JSON_OR_@FILE --output-dir DIR

This wrapper prepares the output and checkpoint directories, builds the job's
environment (with the Darshan runtime preloaded when tracing is on), starts the ranks
of ``train_checkpoint.py`` with ``torchrun`` or ``srun``, waits for them, and merges the
ranks' records into ``DIR/manifest.json``. The Darshan variables go only into the
launcher's environment; this process runs untraced.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import os
import platform
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

MODES = ("torch_save", "dcp", "dcp_async")
LAUNCHERS = ("auto", "torchrun", "srun")
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


def prepare_output_dir(output_dir: Path) -> None:
    """Create ``DIR`` and ``DIR/ranks``, removing rank records and a manifest of an earlier run.

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
    removed, and anything else there is left alone. Returns the names removed.
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
                "--nodes", str(nodes), "--kill-on-bad-exit=1", python, str(script), *arguments]
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
            processes.append({"pid": other["pid"], "ppid": other.get("ppid", record["pid"]),
                              "host": record["host"], "role": other["role"], "rank": rank})
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
        })
    return merged


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
    temporary.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(temporary, path)


def run_job(mode: str, settings: dict, output_dir: Path, environ: Mapping[str, str]) -> dict:
    """Prepare, launch and merge one training job, and return the manifest written to ``DIR/manifest.json``.

    Raises:
        TrainingJobError: the settings are invalid, the launcher failed, or a rank's
            record or checkpoint is missing.
    """
    check_settings(settings, mode)
    output_dir = output_dir.resolve()
    launch = settings["launch"]
    world_size = launch["nodes"] * launch["ranks_per_node"]
    checkpoint_dir = Path(settings["checkpoint"]["dir"])

    prepare_output_dir(output_dir)
    clear_checkpoints(checkpoint_dir)
    darshan_variables, darshan_entry = prepare_darshan(settings.get("darshan"), output_dir)
    settings_file = output_dir / "job_settings.json"
    write_json_atomically(settings_file, settings)

    launcher = choose_launcher(launch.get("launcher", "auto"), environ)
    command = build_launch_command(launcher, launch["nodes"], launch["ranks_per_node"],
                                   training_arguments(mode, settings_file, output_dir))
    launch_env = launch_variables(launcher, environ, output_dir)
    env = child_environment(environ, launch_env, darshan_variables)
    if darshan_entry:
        darshan_entry["environment"]["LD_PRELOAD"] = env["LD_PRELOAD"]

    start_utc = utc_now()
    launcher_pid, exit_code = run_launcher(command, env)
    end_utc = utc_now()
    records, missing = read_rank_records(output_dir / "ranks", world_size)
    if exit_code != 0 or missing:
        missing_text = ", ".join(f"rank{rank}.json" for rank in missing) or "none"
        raise TrainingJobError(f"{mode} training job failed: {launcher} (PID {launcher_pid}) exited with code "
                               f"{exit_code}; missing rank records in {output_dir / 'ranks'}: {missing_text}")

    host = socket.gethostname()
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
        "device": records[0]["device"],
        "backend": records[0]["backend"],
        "checkpoint_dir": str(checkpoint_dir),
        "launch_command": command,
        "launch_environment": launch_env,
        "processes": merge_processes(launcher_pid, host, records),
        "checkpoints": merge_checkpoints(records),
        "darshan": darshan_entry,
        "versions": package_versions(records[0].get("versions", {}), darshan_entry),
        "settings": settings,
    }
    write_json_atomically(output_dir / "manifest.json", manifest)
    log.info("%s: %d checkpoints, manifest %s", mode, len(manifest["checkpoints"]), output_dir / "manifest.json")
    return manifest


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line of the Snakemake rule."""
    parser = argparse.ArgumentParser(description="Run one checkpoint mode's training job and write its manifest.")
    parser.add_argument("--mode", required=True, choices=MODES, help="checkpoint mode")
    parser.add_argument("--settings", required=True,
                        help="job settings as a JSON object, or @path to a JSON file")
    parser.add_argument("--output-dir", required=True, type=Path,
                        help="job output directory for manifest.json, ranks/ and darshan-logs/")
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
        run_job(arguments.mode, settings, arguments.output_dir, os.environ)
    except TrainingJobError as error:
        log.error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
