"""Benchmark each checkpoint mode's save bandwidth as a fraction of the storage baseline, at two checkpoint sizes.

For each checkpoint size, one run of the real workflow (``snakemake --profile
profiles/local``) trains every mode and then measures the storage baseline, back
to back on the same file system, so the ratios compare figures of one run. The
figures are the workflow's own, read from ``results/summary.csv``:

* save fraction: checkpoint size over the mean time until a save was complete,
  divided by the baseline's write bandwidth (``save_fraction_of_baseline``);
* Darshan fraction: checkpoint bytes over the slowest rank's write and fsync
  time as Darshan recorded it, over the baseline's write bandwidth
  (``darshan_fraction_of_baseline``).

Where a save spends its time comes from what the workflow already records. Each
rank records its save's start, end, state dict time and save call time in
``results/<mode>/train/ranks/rank<k>.json``, and Darshan records the checkpoint
files that the rank (or its background writer) wrote, read here with
``rank_view.collect_io``. save_phases() cuts each save at the open of the rank's
data file, its last write and the end of its fsync. A short probe times
torch.save's serialization with and without its CRC-32 on this machine. The
ratios hold on the machine and load of the run; the absolute times do not transfer.

    python benchmarks/bench_baseline_fraction.py --output benchmarks/baseline_fraction.json
"""

from __future__ import annotations

import argparse
import importlib.metadata
import io
import json
import logging
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

REPOSITORY = Path(__file__).resolve().parent.parent
SCRIPTS = REPOSITORY / "workflow" / "scripts"
sys.path.insert(0, str(SCRIPTS))

import rank_view  # noqa: E402  (workflow/scripts, importable once SCRIPTS is on the path)

MIB = 1024**2
# Checkpoint sizes as model settings of the workflow (config key ``model``). Model and
# Adam state take about 12 bytes per parameter (weight, exp_avg, exp_avg_sq in float32),
# so these gave DCP checkpoints of 7.6 MiB, 63.7 MiB and 991 MiB in the runs of BENCHMARKS.md.
SIZES = {
    "8mib": {"name": "small_vit", "pretrained": False,
             "small_vit": {"patch_size": 16, "num_layers": 2, "num_heads": 4, "hidden_dim": 128, "mlp_dim": 512}},
    "64mib": {"name": "small_vit", "pretrained": False,
              "small_vit": {"patch_size": 16, "num_layers": 4, "num_heads": 4, "hidden_dim": 320, "mlp_dim": 1280}},
    "1gib": {"name": "vit_b_16", "pretrained": False},
}
DEFAULT_SIZES = ["64mib", "1gib"]
GOAL = {"mode": "dcp", "size": "1gib", "save_fraction_at_least": 0.8}
ASYNC_MODES = ("dcp_async", "dcp_async_process")
# Parts of a save in the order they happen, as save_phases() returns them; they add up to save_s.
PHASE_COLUMNS = ["state_dict_s", "staging_s", "until_open_s", "write_calls_s", "between_writes_s", "fsync_s",
                 "after_fsync_s"]

log = logging.getLogger("bench_baseline_fraction")


# ---- the workflow run ----------------------------------------------------------------

def workflow_config(model: dict, run_id: str, checkpoint_root: Path, keep: str, darshan_library: str | None,
                    traced: bool) -> dict:
    """Return the config overrides of one benchmark run; every other key keeps its config/config.yaml value."""
    darshan: dict = {"enabled": "true" if traced else "false"}
    if darshan_library:
        darshan["library"] = darshan_library
    return {
        "run_id": run_id,
        "model": model,
        "checkpoint": {"root": str(checkpoint_root), "keep": keep},
        "darshan": darshan,
    }


def snakemake_command(work_dir: Path, config_file: Path) -> list[str]:
    """Return the Snakemake command line that runs the workflow with the local profile in ``work_dir``."""
    return [sys.executable, "-m", "snakemake", "--profile", str(REPOSITORY / "profiles" / "local"),
            "--directory", str(work_dir), "--snakefile", str(REPOSITORY / "Snakefile"),
            "--configfile", str(config_file)]


def run_workflow(command: list[str], log_path: Path) -> float:
    """Run the workflow, write its output to ``log_path`` and return the wall time in seconds.

    Raises:
        RuntimeError: Snakemake failed; the message ends with the end of its output.
    """
    start_s = time.perf_counter()
    with open(log_path, "w") as output:
        completed = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT, check=False)
    wall_s = time.perf_counter() - start_s
    if completed.returncode != 0:
        tail = log_path.read_text(errors="replace")[-4000:]
        raise RuntimeError(f"{shlex.join(command)} failed with exit code {completed.returncode} after "
                           f"{wall_s:.0f} s; its output is in {log_path}, ending:\n{tail}")
    return wall_s


# ---- where a save's time goes --------------------------------------------------------------

def checkpoint_files(results_dir: Path, mode: str) -> pd.DataFrame:
    """Return the Darshan records of the mode's checkpoint files, one row per file, log and module.

    The rows are those of ``rank_view.collect_io``, with absolute times
    (``*_unix_s``), ``fsync_time_s`` and the rank each process counts for.
    A mode that was not traced gives an empty table.
    """
    darshan_dir = results_dir / mode / "darshan"
    info = json.loads((darshan_dir / "locate.json").read_text())
    if not info.get("traced", True) or not info.get("checkpoint_dir"):
        return pd.DataFrame()
    processes = pd.read_csv(darshan_dir / "processes.csv", dtype={"error": str})
    processes["error"] = processes["error"].fillna("")
    _, _, files, _, _ = rank_view.collect_io(processes, darshan_dir / "logs", info["checkpoint_dir"])
    return files


def _sum(frame: pd.DataFrame, column: str) -> float:
    return float(frame[column].fillna(0).clip(lower=0).sum()) if column in frame.columns else 0.0


def save_phases(files: pd.DataFrame, rank_records: dict[int, dict], asynchronous: bool) -> pd.DataFrame:
    """Cut every rank's save of every checkpoint into its parts, one row per rank and checkpoint.

    The rank's data file is the file it (or its background writer) wrote the
    most bytes of in that checkpoint. On one clock, from the rank's save start
    (``start_utc``) to its end (``end_utc``):

    * ``state_dict_s``: training_state(), as the rank recorded it;
    * ``staging_s``: an asynchronous save's async_save call (staging and hand-off), as recorded;
    * ``until_open_s``: the rest of the time until the data file is opened: save
      planning and its collectives, waiting for the other ranks to reach the
      save, and for an asynchronous save the start of its thread or process;
    * ``write_calls_s``: Darshan's write time of the data file less its fsync;
    * ``between_writes_s``: the rest of the time from the open to the last
      write, which the rank spends between write calls (serialization, copies);
    * ``fsync_s``: the data file's fsync, as rank_view estimates it;
    * ``after_fsync_s``: from the end of that fsync to the end of the save (the
      coordinator's metadata file, waiting for the other ranks).

    The parts add up to ``save_s``. Darshan's times can be late by its setup
    time (rank_view.setup_bias_max_s bounds it: 9 to 18 ms for the ranks' logs
    in the runs of BENCHMARKS.md), so a part can be that much off. ``meta_s``
    is Darshan's metadata time of all the rank's files in the checkpoint, which
    for the last checkpoint includes the restore's opens. A rank that wrote
    nothing in a checkpoint (rank 1 of torch_save) gets no parts. Without
    Darshan records (an untraced run) no rank gets parts, and ``bytes_written``
    and ``meta_s`` are None. ``arrival_lead_s`` is how much earlier the rank started the
    save than the last rank did: the most it can wait for the others inside it.
    Records without ``state_dict_s`` (written before it was recorded) give None
    for it and for ``staging_s``, and count that time in ``until_open_s``.
    """
    rows = []
    for rank, record in sorted(rank_records.items()):
        own = files[files["rank"] == rank] if len(files) else files
        for save in record.get("checkpoints", []):
            start_s, end_s = rank_view.parse_utc(save["start_utc"]), rank_view.parse_utc(save["end_utc"])
            row = {"rank": int(rank), "step": int(save["step"]), "checkpoint": save["path"], "start_unix_s": start_s,
                   "save_s": end_s - start_s, "bytes_written": 0 if len(files) else None, "data_file": None,
                   "meta_s": 0.0 if len(files) else None,
                   **{column: None for column in PHASE_COLUMNS}}
            in_checkpoint = own[own["checkpoint"] == save["path"]] if len(own) else own
            written = in_checkpoint[in_checkpoint["BYTES_WRITTEN"].fillna(0) > 0] if len(in_checkpoint) else in_checkpoint
            if len(written):
                row.update(data_file_parts(in_checkpoint, written, start_s, end_s))
                row.update(split_before_open(row.pop("before_open_s"), save, asynchronous))
            rows.append(row)
    phases = pd.DataFrame(rows, columns=["rank", "step", "checkpoint", "start_unix_s", "save_s", *PHASE_COLUMNS,
                                         "meta_s", "bytes_written", "data_file"])
    phases["arrival_lead_s"] = phases.groupby("step")["start_unix_s"].transform("max") - phases["start_unix_s"]
    return phases.drop(columns="start_unix_s")


def data_file_parts(checkpoint_rows: pd.DataFrame, written: pd.DataFrame, start_s: float, end_s: float) -> dict:
    """Return the parts of one rank's save from the records of the files it wrote in one checkpoint.

    ``checkpoint_rows`` are all the rank's records in the checkpoint (opens
    without writes too), ``written`` those with bytes written.
    """
    data_file = written.groupby("file")["BYTES_WRITTEN"].sum().idxmax()
    data = written[written["file"] == data_file]
    # torch.save opens its file through STDIO and writes through POSIX: the open is the earliest of any module.
    opened_s = float(checkpoint_rows.loc[checkpoint_rows["file"] == data_file, "OPEN_START_unix_s"].min())
    last_write_s = float(data["WRITE_END_unix_s"].max())
    fsync_s = _sum(data, "fsync_time_s")
    write_calls_s = _sum(data, "F_WRITE_TIME") - fsync_s
    return {
        "data_file": Path(data_file).name,
        "bytes_written": int(_sum(written, "BYTES_WRITTEN")),
        "meta_s": _sum(checkpoint_rows, "F_META_TIME"),
        "before_open_s": opened_s - start_s,
        "write_calls_s": write_calls_s,
        "between_writes_s": last_write_s - opened_s - write_calls_s,
        "fsync_s": fsync_s,
        "after_fsync_s": end_s - last_write_s - fsync_s,
    }


def split_before_open(before_open_s: float, save: dict, asynchronous: bool) -> dict:
    """Split the time from a save's start to the open of its data file with the times the rank recorded.

    A synchronous save call contains the whole save, so only an asynchronous
    one (staging and hand-off) is a part before the open.
    """
    if "state_dict_s" not in save:
        return {"state_dict_s": None, "staging_s": None, "until_open_s": before_open_s}
    staging_s = float(save["save_call_s"]) if asynchronous else 0.0
    return {"state_dict_s": float(save["state_dict_s"]), "staging_s": staging_s,
            "until_open_s": before_open_s - float(save["state_dict_s"]) - staging_s}


def phase_means(phases: pd.DataFrame) -> dict[str, dict]:
    """Return each rank's mean over its checkpoints of every part of a save, keyed by rank."""
    means = {}
    for rank, group in phases.groupby("rank"):
        entry = {"checkpoints": int(len(group)), "save_s": float(group["save_s"].mean())}
        for column in [*PHASE_COLUMNS, "meta_s", "arrival_lead_s", "bytes_written"]:
            values = group[column].dropna()
            entry[column] = float(values.mean()) if len(values) else None
        means[str(int(rank))] = entry
    return means


# ---- per mode -----------------------------------------------------------------------------------

def number(value) -> float | None:
    """Return a table cell as a float, or None when it is empty or not a number ("not traced")."""
    try:
        result = float(value)
    except (TypeError, ValueError):
        return None
    return None if pd.isna(result) else result


def mode_figures(summary_row: dict, manifest: dict, phases: pd.DataFrame, baseline_write_mib_per_s: float) -> dict:
    """Collect one mode's fractions of the baseline and the figures that show where its save time goes."""
    checkpoints = manifest["checkpoints"]
    size_bytes = sum(c["bytes"] for c in checkpoints) / len(checkpoints)
    completion_mean_s = number(summary_row.get("completion_mean_s"))
    save_fraction = number(summary_row.get("save_fraction_of_baseline"))
    return {
        "checkpoints": len(checkpoints),
        "checkpoint_size_bytes": size_bytes,
        "bytes_by_rank": checkpoints[-1]["bytes_by_rank"],
        "blocking_mean_s": number(summary_row.get("blocking_mean_s")),
        "completion_mean_s": completion_mean_s,
        "completion_max_s_by_checkpoint": [c["completion_max_s"] for c in checkpoints],
        "completion_s_by_rank_and_checkpoint": [c["completion_s"] for c in checkpoints],
        "save_mib_per_s": size_bytes / MIB / completion_mean_s if completion_mean_s else None,
        "save_fraction_of_baseline": save_fraction,
        "darshan_bandwidth_by_slowest_mib_per_s": number(summary_row.get("bandwidth_by_slowest_mib_per_s")),
        "darshan_write_bandwidth_mib_per_s": number(summary_row.get("write_bandwidth_mib_per_s")),
        "darshan_fraction_of_baseline": number(summary_row.get("darshan_fraction_of_baseline")),
        "darshan_slowest_rank_io_time_s": number(summary_row.get("slowest_rank_io_time_s")),
        # The time the baseline's ranks take to write one checkpoint's bytes.
        "baseline_time_for_checkpoint_s": size_bytes / MIB / baseline_write_mib_per_s,
        "rank_imbalance_bytes": number(summary_row.get("rank_imbalance_bytes")),
        "save_fraction_at_least_goal": (save_fraction >= GOAL["save_fraction_at_least"]
                                        if save_fraction is not None else None),
        "phase_means_by_rank": phase_means(phases) if len(phases) else {},
        "phases": phases.to_dict(orient="records"),
    }


class NullSink(io.RawIOBase):
    """A writable stream that drops what it is given, so that only serialization is timed."""

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        return memoryview(data).nbytes


def serialization_probe(total_bytes: int, tensor_bytes: int = 4_718_592) -> dict:
    """Time torch.save of float32 tensors into a NullSink, with and without its CRC-32, in MiB/s.

    DCP's FileSystemWriter (torch 2.14) calls torch.save once per tensor of a
    rank's shard, and torch.save computes a CRC-32 of every tensor's bytes
    unless ``torch.utils.serialization.config.save.compute_crc32`` is off. The
    default tensor size is one rank's half of a 768 x 3072 vit_b_16 MLP weight.
    """
    import torch
    from torch.utils.serialization import config

    tensors = [torch.randn(tensor_bytes // 4) for _ in range(max(1, total_bytes // tensor_bytes))]
    probe_bytes = sum(tensor.nbytes for tensor in tensors)
    result = {"bytes": probe_bytes, "tensor_bytes": tensor_bytes}
    saved = config.save.compute_crc32
    fastest_s = {True: float("inf"), False: float("inf")}
    try:
        # Alternate the settings and keep the fastest of two passes each, so that a first pass
        # that warms caches counts for neither.
        for crc32 in (True, False, True, False):
            config.save.compute_crc32 = crc32
            stream = io.BufferedWriter(NullSink())
            start_s = time.perf_counter()
            for tensor in tensors:
                torch.save(tensor, stream)
            fastest_s[crc32] = min(fastest_s[crc32], time.perf_counter() - start_s)
    finally:
        config.save.compute_crc32 = saved
    result["crc32_on_mib_per_s"] = probe_bytes / MIB / fastest_s[True]
    result["crc32_off_mib_per_s"] = probe_bytes / MIB / fastest_s[False]
    return result


def size_result(work_dir: Path, command: list[str], config: dict, wall_s: float, load_before: tuple) -> dict:
    """Read one finished workflow run: the baseline and every mode's fractions and save parts."""
    results_dir = work_dir / "results"
    summary = pd.read_csv(results_dir / "summary.csv")
    baseline = json.loads((results_dir / "baseline" / "baseline.json").read_text())
    modes, starts = {}, {}
    for row in summary.to_dict(orient="records"):
        mode = row["mode"]
        manifest = json.loads((results_dir / mode / "train" / "manifest.json").read_text())
        starts[mode] = manifest["start_utc"]
        records = rank_view.read_rank_records(results_dir / mode / "train" / "ranks")
        phases = save_phases(checkpoint_files(results_dir, mode), records, mode in ASYNC_MODES)
        modes[mode] = mode_figures(row, manifest, phases, baseline["write_mib_per_s"])
        modes[mode]["versions"] = manifest.get("versions")
    return {
        "command": shlex.join(command),
        "config_overrides": config,
        "wall_s": wall_s,
        "load_average_before": list(load_before),
        "run_order": sorted(starts, key=starts.get),
        "baseline": {key: baseline[key] for key in ("ranks", "bytes_per_rank", "block_bytes", "repeats", "write_s",
                                                    "read_s", "write_mib_per_s", "read_mib_per_s")},
        "modes": modes,
    }


# ---- the machine ------------------------------------------------------------------------------------

def command_output(command: list[str]) -> str:
    """Return a command's standard output, or an empty string when it is missing or fails."""
    if not shutil.which(command[0]):
        return ""
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    return completed.stdout.strip() if completed.returncode == 0 else ""


def filesystem(directory: Path) -> dict:
    """Describe the file system and block device that hold ``directory``."""
    source, fstype, options = (command_output(["findmnt", "-n", "-o", "SOURCE,FSTYPE,OPTIONS", "--target",
                                                str(directory)]).split() + ["", "", ""])[:3]
    device = Path(source).name
    rotational = Path(f"/sys/block/{device}/queue/rotational")
    scheduler = Path(f"/sys/block/{device}/queue/scheduler")
    usage = shutil.disk_usage(directory)
    return {
        "directory": str(directory), "source": source or None, "type": fstype or None, "mount_options": options or None,
        "device_model": command_output(["lsblk", "-dn", "-o", "MODEL", source]) or None if source else None,
        "rotational": rotational.read_text().strip() == "1" if rotational.is_file() else None,
        "scheduler": scheduler.read_text().strip() if scheduler.is_file() else None,
        "size_bytes": usage.total, "free_bytes": usage.free,
    }


def memory_state() -> dict:
    """Return free memory, page cache and dirty pages in GiB from /proc/meminfo.

    Writes into the page cache cost more when the kernel must first reclaim
    pages, so the state before a run helps to judge its write times.
    """
    fields = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("MemFree", "MemAvailable", "Cached", "Dirty"):
            fields[f"{name.lower()}_gib"] = round(int(value.split()[0]) / 1024**2, 2)
    return fields


def machine(checkpoint_dir: Path) -> dict:
    """Describe the machine, its load and the checkpoint file system the benchmark ran on."""
    lscpu = dict(line.split(":", 1) for line in command_output(["lscpu"]).splitlines() if ":" in line)
    memory_kib = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                       if line.startswith("MemTotal:")), None)
    versions = {"python": platform.python_version()}
    for package in ("torch", "torchvision", "snakemake", "darshan", "pandas"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu": lscpu.get("Model name", platform.processor()).strip(),
        "cores": os.cpu_count(),
        "threads_per_core": lscpu.get("Thread(s) per core", "").strip() or None,
        "hypervisor": lscpu.get("Hypervisor vendor", "").strip() or None,
        "memory_gib": round(memory_kib / 1024**2, 1) if memory_kib else None,
        "kernel": platform.release(),
        "filesystem": filesystem(checkpoint_dir),
        "versions": versions,
        "load_average": list(os.getloadavg()),
    }


# ---- the report ---------------------------------------------------------------------------------------

def _cell(value, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def results_table(sizes: dict[str, dict]) -> str:
    """Render the fractions of every size and mode as a Markdown table."""
    lines = ["| size | mode | checkpoint (MiB) | save complete after (s) | save (MiB/s) | baseline write (MiB/s) "
             "| save / baseline | Darshan / baseline |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for size, result in sizes.items():
        baseline = result["baseline"]["write_mib_per_s"]
        for mode, figures in result["modes"].items():
            lines.append(f"| {size} | {mode} | {figures['checkpoint_size_bytes'] / MIB:.1f} "
                         f"| {_cell(figures['completion_mean_s'], 3)} | {_cell(figures['save_mib_per_s'], 0)} "
                         f"| {baseline:.0f} | {_cell(figures['save_fraction_of_baseline'])} "
                         f"| {_cell(figures['darshan_fraction_of_baseline'])} |")
    return "\n".join(lines)


def phases_table(sizes: dict[str, dict]) -> str:
    """Render each rank's mean save parts, for every size and mode, as a Markdown table."""
    lines = ["| size | mode | rank | save (s) | state dict (s) | staging (s) | until open (s) | write calls (s) "
             "| between writes (s) | fsync (s) | after fsync (s) | metadata calls (s) | started before last rank (s) "
             "| MiB written |", "|---|---|---:|" + "---:|" * 12]
    for size, result in sizes.items():
        for mode, figures in result["modes"].items():
            for rank, means in figures["phase_means_by_rank"].items():
                parts = " | ".join(_cell(means[column], 3) for column in [*PHASE_COLUMNS, "meta_s", "arrival_lead_s"])
                written_mib = means["bytes_written"] / MIB if means["bytes_written"] is not None else None
                lines.append(f"| {size} | {mode} | {rank} | {means['save_s']:.3f} | {parts} | {_cell(written_mib, 1)} |")
    return "\n".join(lines)


def goal_verdict(sizes: dict[str, dict]) -> dict:
    """Return whether the goal mode reached the goal fraction at the goal size, or why that is unknown."""
    figures = sizes.get(GOAL["size"], {}).get("modes", {}).get(GOAL["mode"])
    fraction = figures["save_fraction_of_baseline"] if figures else None
    return {**GOAL, "save_fraction": fraction, "met": None if fraction is None else fraction >= GOAL["save_fraction_at_least"]}


# ---- main ----------------------------------------------------------------------------------------------

def run_size(size: str, work_root: Path, args: argparse.Namespace) -> dict:
    """Run the workflow once for one checkpoint size and return what it measured."""
    work_dir = work_root / size
    work_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_root = work_dir / "checkpoints"
    config = workflow_config(SIZES[size], f"bench-{size}", checkpoint_root, args.checkpoint_keep, args.darshan_library,
                             not args.untraced)
    config_file = work_dir / "bench_config.yaml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    command = snakemake_command(work_dir, config_file)
    load_before, memory_before = os.getloadavg(), memory_state()
    log.info("%s: running the workflow (load average %.2f): %s", size, load_before[0], shlex.join(command))
    wall_s = run_workflow(command, work_dir / "snakemake.log")
    log.info("%s: the workflow finished in %.0f s", size, wall_s)
    result = size_result(work_dir, command, config, wall_s, load_before)
    result["memory_before"] = memory_before
    result["machine_after"] = {"filesystem": filesystem(checkpoint_root)}
    if not args.keep_checkpoints:
        shutil.rmtree(checkpoint_root, ignore_errors=True)
        log.info("%s: removed the checkpoints under %s", size, checkpoint_root)
    return result


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=DEFAULT_SIZES,
                        help="checkpoint sizes to run, one workflow run each (8mib is a quick check)")
    parser.add_argument("--work-dir", type=Path,
                        help="directory for the runs' results, logs and checkpoints, one subdirectory per size "
                             "(default: a temporary directory, removed afterwards)")
    parser.add_argument("--darshan-library", help="libdarshan.so, its directory or the Darshan installation prefix "
                                                  "(default: the workflow's search, such as $DARSHAN_ROOT)")
    parser.add_argument("--untraced", action="store_true",
                        help="run without Darshan: the fractions only, no save parts or Darshan fraction")
    parser.add_argument("--checkpoint-keep", choices=["all", "last", "none"], default="all",
                        help="checkpoint.keep of the runs: checkpoints kept after each training job (default all)")
    parser.add_argument("--keep-checkpoints", action="store_true",
                        help="leave the checkpoints on disk after each size (default: remove them)")
    parser.add_argument("--output", type=Path, help="JSON file for the results")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(message)s")
    work_root = (args.work_dir or Path(tempfile.mkdtemp(prefix="bench_baseline_fraction_"))).resolve()
    work_root.mkdir(parents=True, exist_ok=True)
    results: dict = {"command": shlex.join([Path(sys.executable).name, *sys.argv]), "machine": machine(work_root),
                     "sizes": {}}
    log.info("machine: %s", json.dumps(results["machine"]))
    try:
        for size in args.sizes:
            results["sizes"][size] = run_size(size, work_root, args)
    except RuntimeError as error:
        log.error("%s", error)
        return 1
    finally:
        if args.work_dir is None:
            shutil.rmtree(work_root, ignore_errors=True)

    results["serialization_probe"] = serialization_probe(256 * MIB)
    results["goal"] = goal_verdict(results["sizes"])
    log.info("fractions of the storage baseline:\n%s", results_table(results["sizes"]))
    log.info("mean parts of a save per rank:\n%s", phases_table(results["sizes"]))
    log.info("torch.save of float32 tensors into a discarding stream: %.0f MiB/s with CRC-32, %.0f MiB/s without",
             results["serialization_probe"]["crc32_on_mib_per_s"], results["serialization_probe"]["crc32_off_mib_per_s"])
    log.info("goal: %s", results["goal"])
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=1, default=str) + "\n")
        log.info("wrote %s", args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
