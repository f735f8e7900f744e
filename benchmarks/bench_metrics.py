"""Benchmark the per-log cost of the Darshan analysis against `python -m darshan summary`, and at 1,000 logs.

One run measures, on the same real logs (tests/data/darshan-logs):

1. ``python -m darshan summary`` per log against darshan_metrics.py and
   rank_view.py per log, each started as its rule starts it. The darshan_summary
   rule runs one process per log, as many at once as there are cores. The
   analysis rules run one process for all logs of a mode, which reads them in a
   pool over the cores.
2. darshan_metrics.py and rank_view.py on copies of those logs under distinct
   names: the per-log cost with many logs against that with few.

Every figure is the wall time of the programs as the workflow starts them,
interpreter start included, so it compares what a user waits for. The ratios
hold on the machine and load of the run; the absolute times do not transfer.

    python benchmarks/bench_metrics.py --output benchmarks/results.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

REPOSITORY = Path(__file__).resolve().parent.parent
SCRIPTS = REPOSITORY / "workflow" / "scripts"
DATA = REPOSITORY / "tests" / "data" / "darshan-logs"
# The six training jobs of tests/data/darshan-logs (its README.md describes them).
JOBS = ["torch_save", "torch_save_spawn", "dcp", "dcp_dxt", "dcp_async_thread", "dcp_async_process"]
SUMMARY_TARGET_RATIO = 20.0
SCALING_TARGET_RATIO = 1.5

log = logging.getLogger("bench_metrics")


def real_logs(data: Path, jobs: list[str]) -> tuple[list[Path], str]:
    """Return the logs of the given training jobs and the directory all of them checkpointed under.

    Raises:
        SystemExit: a job directory has no logs/ or no checkpoint_root.txt.
    """
    roots, logs = [], []
    for job in jobs:
        root_file, log_dir = data / job / "checkpoint_root.txt", data / job / "logs"
        if not root_file.is_file() or not log_dir.is_dir():
            raise SystemExit(f"{data / job} has no logs/ or no checkpoint_root.txt; give --data the "
                             "tests/data/darshan-logs directory and --jobs the names of its training jobs")
        roots.append(root_file.read_text().strip())
        logs += sorted(log_dir.glob("*.darshan"))
    return logs, os.path.commonpath(roots)


def copy_logs(sources: list[Path], count: int, directory: Path) -> pd.DataFrame:
    """Copy the logs round-robin into ``count`` files with distinct Darshan names; return their processes table.

    Each copy is its own process and rank, so the aggregation treats a batch of
    1,000 copies as a job of 1,000 ranks.
    """
    directory.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(count):
        pid = 100000 + index
        name = f"bench_python3_id{pid}-{pid}_12-4-71838-{index}_1.darshan"
        shutil.copyfile(sources[index % len(sources)], directory / name)
        rows.append({"log": name, "pid": pid, "role": "rank", "rank": index, "error": ""})
    return pd.DataFrame(rows)


def run_measured(command: list[str]) -> tuple[float, float]:
    """Run a command, raise on failure, and return its wall time in seconds and its peak memory in MiB.

    The peak is the largest resident set of one process: the command or any
    process it started and waited for, such as a pool worker (ru_maxrss of wait4).
    """
    start_s = time.perf_counter()
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        elapsed_s = time.perf_counter() - start_s
        if process.returncode != 0:
            stderr.seek(0)
            raise RuntimeError(f"{' '.join(command)} failed with exit code {process.returncode}:\n"
                               f"{stderr.read().decode(errors='replace')[-3000:]}")
    return elapsed_s, usage.ru_maxrss / 1024


def run_timed(command: list[str]) -> float:
    """Run a command, raise on failure, and return its wall time in seconds."""
    return run_measured(command)[0]


def time_summaries(logs: list[Path], output_dir: Path, workers: int) -> float:
    """Render ``python -m darshan summary`` of every log, ``workers`` at once; return the wall time."""
    output_dir.mkdir(parents=True, exist_ok=True)
    commands = [[sys.executable, "-m", "darshan", "summary", str(path), "--output", str(output_dir / f"{path.stem}.html")]
                for path in logs]
    start_s = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(run_timed, commands))
    return time.perf_counter() - start_s


def time_analysis(script: str, processes: pd.DataFrame, logs_dir: Path, checkpoint_dir: str, work: Path) -> tuple[float, float]:
    """Run darshan_metrics.py or rank_view.py on one batch of logs as its rule does.

    Returns:
        The wall time in seconds and the peak memory in MiB.
    """
    work.mkdir(parents=True, exist_ok=True)
    processes.to_csv(work / "processes.csv", index=False)
    (work / "locate.json").write_text(json.dumps({"traced": True, "source": "existing", "checkpoint_dir": checkpoint_dir}))
    command = [sys.executable, str(SCRIPTS / script), "--mode", "bench", "--processes", str(work / "processes.csv"),
               "--info", str(work / "locate.json"), "--logs-dir", str(logs_dir)]
    if script == "darshan_metrics.py":
        command += ["--output", str(work / "metrics.json"), "--per-process", str(work / "per_process.csv")]
    else:
        command += ["--output-dir", str(work / "ranks")]
    return run_measured(command)


def per_log_s(wall_s: float, logs: int) -> float:
    return wall_s / logs


def summary_comparison(logs: list[Path], checkpoint_dir: str, work: Path, workers: int) -> dict:
    """Measure summaries and the analysis on the same distinct real logs."""
    processes = copy_logs(logs, len(logs), work / "distinct")
    result = {"logs": len(logs), "workers": workers}
    result["summary_per_log_s"] = per_log_s(time_summaries(logs, work / "summaries", workers), len(logs))
    for script, key in (("darshan_metrics.py", "metrics"), ("rank_view.py", "rank_view")):
        wall_s, _ = time_analysis(script, processes, work / "distinct", checkpoint_dir, work / f"{key}_distinct")
        result[f"{key}_per_log_s"] = per_log_s(wall_s, len(logs))
        result[f"summary_over_{key}"] = result["summary_per_log_s"] / result[f"{key}_per_log_s"]
    return result


def scaling(logs: list[Path], checkpoint_dir: str, work: Path, small: int, large: int) -> dict:
    """Measure the per-log cost of the analysis with ``small`` and with ``large`` copies of the logs."""
    result: dict = {"small_logs": small, "large_logs": large}
    for count in (small, large):
        directory = work / f"copies_{count}"
        processes = copy_logs(logs, count, directory)
        for script, key in (("darshan_metrics.py", "metrics"), ("rank_view.py", "rank_view")):
            wall_s, peak_mib = time_analysis(script, processes, directory, checkpoint_dir, work / f"{key}_{count}")
            result[f"{key}_{count}_wall_s"] = wall_s
            result[f"{key}_{count}_per_log_s"] = per_log_s(wall_s, count)
            result[f"{key}_{count}_peak_mib"] = peak_mib
            log.info("%s on %d logs: %.1f s, %.3f s per log, peak memory %.0f MiB", script, count, wall_s,
                     wall_s / count, peak_mib)
        shutil.rmtree(directory)
    for key in ("metrics", "rank_view"):
        result[f"{key}_per_log_ratio"] = result[f"{key}_{large}_per_log_s"] / result[f"{key}_{small}_per_log_s"]
        # The cost of each log beyond the first batch, without the start-up both runs share.
        extra_s = result[f"{key}_{large}_wall_s"] - result[f"{key}_{small}_wall_s"]
        result[f"{key}_marginal_per_log_s"] = extra_s / (large - small)
    return result


def machine() -> dict:
    """Describe the machine the benchmark ran on."""
    memory_kib = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                       if line.startswith("MemTotal:")), None)
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout if shutil.which("lscpu") else ""
    model = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")), None)
    return {"cpu": model or platform.processor(), "nproc": os.cpu_count(),
            "memory_gib": round(memory_kib / 1024**2, 1) if memory_kib else None,
            "python": platform.python_version(), "load_average": os.getloadavg()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="directory of job directories with real logs")
    parser.add_argument("--jobs", nargs="+", default=JOBS, help="job directories under --data whose logs are used")
    parser.add_argument("--small", type=int, default=10, help="logs in the small batch")
    parser.add_argument("--large", type=int, default=1000, help="logs in the large batch")
    parser.add_argument("--summary-logs", type=int,
                        help="compare on only the first N real logs (default: all; each summary takes seconds)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="summaries rendered at once (the analysis uses its own pool over the cores)")
    parser.add_argument("--work-dir", type=Path, help="where the copies go (default: a temporary directory, removed after)")
    parser.add_argument("--output", type=Path, help="JSON file for the results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(message)s")
    if not 0 < args.small < args.large:
        parser.error(f"need 0 < --small < --large, not {args.small} and {args.large}")

    logs, checkpoint_dir = real_logs(args.data, args.jobs)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench_metrics_"))
    try:
        results = {"machine": machine(), "command": " ".join([Path(sys.executable).name, *sys.argv])}
        log.info("%d real logs from %s; checkpoint directory %s; work directory %s", len(logs), args.data,
                 checkpoint_dir, work)
        results["summary"] = summary_comparison(logs[:args.summary_logs], checkpoint_dir, work, args.workers)
        results["scaling"] = scaling(logs, checkpoint_dir, work, args.small, args.large)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)

    summary, scale = results["summary"], results["scaling"]
    results["targets"] = {
        "summary_over_metrics_at_least": SUMMARY_TARGET_RATIO,
        "summary_over_metrics_met": summary["summary_over_metrics"] >= SUMMARY_TARGET_RATIO,
        "per_log_ratio_at_most": SCALING_TARGET_RATIO,
        "per_log_ratio_met": scale["metrics_per_log_ratio"] <= SCALING_TARGET_RATIO,
    }
    log.info("python -m darshan summary: %.2f s per log; darshan_metrics.py %.3f s (%.0fx faster); "
             "rank_view.py %.3f s (%.0fx faster)", summary["summary_per_log_s"], summary["metrics_per_log_s"],
             summary["summary_over_metrics"], summary["rank_view_per_log_s"], summary["summary_over_rank_view"])
    for key in ("metrics", "rank_view"):
        log.info("%s per log: %.3f s at %d logs, %.3f s at %d logs (ratio %.2f; marginal %.3f s per log)", key,
                 scale[f"{key}_{args.small}_per_log_s"], args.small, scale[f"{key}_{args.large}_per_log_s"], args.large,
                 scale[f"{key}_per_log_ratio"], scale[f"{key}_marginal_per_log_s"])
    log.info("targets met: %s", results["targets"])
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
