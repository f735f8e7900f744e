"""Config validation, the Darshan runtime check and every path of the workflow."""

import json
import os
import re
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

min_version("9.0")

SCRIPTS = Path(workflow.basedir) / "workflow" / "scripts"
sys.path.insert(0, str(SCRIPTS))

# Jobs run the scripts with the interpreter that runs Snakemake, so they see the
# same packages (torch, PyDarshan) whichever environment is active.
PYTHON = shlex.quote(sys.executable)

# NOTE: the conda environment is written for --software-deployment-method conda
# but has not been built here; the tested setup is requirements.txt in a venv.
CONDA_ENV = "../workflow/envs/ckptio.yaml"


def script(name):
    """Return the shell-quoted path of a script in workflow/scripts."""
    return shlex.quote(str(SCRIPTS / name))


def quote_arguments(arguments):
    """Join arguments for a shell command, each quoted, so no path can break or inject into it."""
    return " ".join(shlex.quote(str(argument)) for argument in arguments)

import darshan_runtime  # noqa: E402
import run_training  # noqa: E402
import settings_check  # noqa: E402
import slurm_settings  # noqa: E402
import sweep_points  # noqa: E402


# ---- config -----------------------------------------------------------------

# A placeholder Slurm account in the profile stops the run here, before any sbatch.
try:
    slurm_settings.check_slurm_account(workflow)
except slurm_settings.SlurmSettingsError as error:
    raise WorkflowError(str(error)) from None

try:
    settings_check.validate_config(
        config,
        Path(workflow.basedir) / "config" / "schema" / "config.schema.yaml",
        sources=", ".join(["config/config.yaml", *map(str, workflow.overwrite_configfiles)]) + " and --config",
    )
    settings_check.check_config(config)
except settings_check.ConfigError as error:
    raise WorkflowError(str(error)) from None

MODES = list(config["modes"])
EXISTING = dict(config.get("existing_logs") or {})
RUN_MODES = [mode for mode in MODES if mode not in EXISTING]
RANKS = config["launch"]["nodes"] * config["launch"]["ranks_per_node"]
CHECKPOINT_ROOT = Path(os.path.expandvars(os.path.expanduser(config["checkpoint"]["root"]))).absolute()


# A sweep (sweep.enabled) runs every mode at every point, sweep.repeats times, in
# results/sweep/<point>/<repeat>/<mode>/ instead of the single run in results/<mode>/.
SWEEP = settings_check.sweep_enabled(config)
SWEEP_POINTS = {point.name: point for point in sweep_points.sweep_points(config)} if SWEEP else {}
SWEEP_REPEATS = sweep_points.repeat_names(config["sweep"]["repeats"]) if SWEEP else []
if SWEEP:
    print(sweep_points.describe(list(SWEEP_POINTS.values()), MODES, len(SWEEP_REPEATS)), file=sys.stderr)


def check_local_launch():
    """Stop before any job when a run on this machine (torchrun) gets ranks it cannot start as measured.

    Called from onstart, because the executor and the cores are known only once the
    run starts (a dry run skips it). A sweep then fails here, not hours in at its
    first such point.
    """
    if not RUN_MODES or not workflow.local_exec or workflow.remote_exec:
        return
    if run_training.choose_launcher(config["launch"]["launcher"], os.environ) != "torchrun":
        return
    if SWEEP:
        points = [(point.nodes, point.ranks_per_node) for point in SWEEP_POINTS.values()]
        keys = tuple(f"sweep.{key}" if config["sweep"][key] else f"launch.{key}" for key in ("nodes", "ranks_per_node"))
    else:
        points = [(config["launch"]["nodes"], config["launch"]["ranks_per_node"])]
        keys = ("launch.nodes", "launch.ranks_per_node")
    cores = getattr(workflow.global_resources.get("_cores"), "value", None)
    try:
        settings_check.check_local_launch(points, cores, bool(config["launch"]["oversubscribe"]), keys)
    except (settings_check.ConfigError, run_training.TrainingJobError) as error:
        raise WorkflowError(str(error)) from None


def rank_job_resources(nodes, ranks):
    """Resources of a job with one task per rank: the training jobs and the storage baseline.

    Slurm (snakemake-executor-plugin-slurm): one task per rank and, with cuda, one GPU per
    rank (sbatch --gpus is a total); tasks_per_gpu=0 leaves --ntasks-per-gpu out. With mpi
    the plugin runs the command in the batch script, so the job's own srun starts the only
    step. The plugin rejects mpi for one task, so a one-rank job runs inside the plugin's
    srun step and run_training.py passes srun --overlap. The local profile offers one
    training slot, so these jobs never overlap there.
    """
    return {
        "nodes": nodes,
        "tasks": ranks,
        "cpus_per_task": 1,
        "gpu": ranks if config["launch"]["device"] == "cuda" else 0,
        "tasks_per_gpu": 0,
        **({"mpi": "srun"} if ranks > 1 else {}),
        "training_slots": 1,
    }


RANK_JOB_RESOURCES = rank_job_resources(config["launch"]["nodes"], RANKS)

wildcard_constraints:
    mode="|".join(MODES),
    log=r"[^/]+",
    point="|".join(re.escape(name) for name in SWEEP_POINTS) or "no-sweep",
    repeat="|".join(SWEEP_REPEATS) or "no-sweep",


# ---- Darshan runtime ----------------------------------------------------------

def _resolve_darshan():
    """Find the Darshan runtime when some mode is run, not only analysed."""
    if all(mode in EXISTING for mode in MODES):
        return None
    try:
        return darshan_runtime.resolve_runtime(config["darshan"]["enabled"], config["darshan"]["library"])
    except darshan_runtime.DarshanNotFoundError as error:
        raise WorkflowError(str(error)) from None


DARSHAN = _resolve_darshan()


# ---- paths ------------------------------------------------------------------

RESULTS = Path("results")
LOGS = Path("logs")


def train_dir(mode):
    return RESULTS / mode / "train"


def manifest_path(mode):
    return train_dir(mode) / "manifest.json"


def darshan_dir(mode):
    return RESULTS / mode / "darshan"


def processes_path(mode):
    return darshan_dir(mode) / "processes.csv"


def metrics_path(mode):
    return RESULTS / mode / "metrics" / "metrics.json"


def checkpoint_dir(mode):
    return CHECKPOINT_ROOT / config["run_id"] / mode


SWEEP_DIR = RESULTS / "sweep"
# A sweep and a single run in one directory keep their own reports.
REPORT_PATH = SWEEP_DIR / "report.html" if SWEEP else RESULTS / "report.html"
# Pattern of one sweep run's results directory, with the wildcards of the sweep rules.
SWEEP_RUN = str(SWEEP_DIR / "{point}" / "{repeat}" / "{mode}")
SWEEP_LOGS = str(LOGS / "sweep" / "{point}" / "{repeat}" / "{mode}")


def sweep_run_dir(point, repeat, mode):
    return SWEEP_DIR / point / repeat / mode


def sweep_checkpoint_dir(point, repeat, mode):
    return CHECKPOINT_ROOT / config["run_id"] / "sweep" / point / repeat / mode


def sweep_runs():
    """List every (point, repeat, mode) of the sweep, points outermost."""
    return [(point, repeat, mode) for point in SWEEP_POINTS for repeat in SWEEP_REPEATS for mode in MODES]


# ---- inputs and parameters --------------------------------------------------

def locate_input(wildcards):
    """The manifest of a mode that is run; nothing for a mode given as existing logs."""
    if wildcards.mode in EXISTING:
        return {}
    return {"manifest": str(manifest_path(wildcards.mode))}


def locate_arguments(wildcards):
    """Command-line arguments of locate_logs.py that say where the logs are."""
    mode = wildcards.mode
    arguments = ["--mode", mode]
    if mode in EXISTING:
        entry = EXISTING[mode]
        arguments += ["--logs", entry["logs"]]
        if entry.get("manifest"):
            arguments += ["--manifest", entry["manifest"]]
        if entry.get("checkpoint_dir"):
            arguments += ["--checkpoint-dir", entry["checkpoint_dir"]]
    else:
        arguments = run_locate_arguments(mode, manifest_path(mode))
    return arguments


def run_locate_arguments(mode, manifest):
    """Command-line arguments of locate_logs.py for a job that this workflow ran and that wrote ``manifest``."""
    arguments = ["--mode", mode, "--manifest", str(manifest), "--wait-s", str(config["darshan"]["log_wait_s"])]
    for directory in config["darshan"]["extra_log_dirs"]:
        arguments += ["--extra-log-dir", os.path.expandvars(directory)]
    return arguments


def training_settings(mode):
    """Everything the training job of one mode needs, as one JSON-serialisable dict."""
    darshan = None
    if DARSHAN is not None:
        darshan = {
            "runtime": DARSHAN.as_dict(),
            "max_records": config["darshan"]["max_records"],
            "modules": config["darshan"]["modules"],
            "dxt": config["darshan"]["dxt"],
        }
    return {
        "run_id": config["run_id"],
        "mode": mode,
        "model": config["model"],
        "training": config["training"],
        "launch": config["launch"],
        "checkpoint": {"dir": str(checkpoint_dir(mode)), "fsync": config["checkpoint"]["fsync"],
                       "dcp_threads": config["checkpoint"]["dcp_threads"],
                       "keep": config["checkpoint"]["keep"]},
        "darshan": darshan,
    }


def sweep_training_settings(point, repeat, mode):
    """Build the training settings of one sweep run: the point's nodes, ranks and model, and its own checkpoint directory."""
    settings = sweep_points.point_settings(training_settings(mode), SWEEP_POINTS[point],
                                           str(sweep_checkpoint_dir(point, repeat, mode)))
    settings["run_id"] = f"{config['run_id']}-{point}-{repeat}"
    return settings


def sweep_resource(name):
    """Return a function that gives one resource of a sweep job from its point's nodes and ranks (see rank_job_resources).

    A rule's resources cannot be left out per job, so a one-rank point gets mpi="".
    The Slurm plugin submits it as a job without mpi (one task is allowed), and its
    job-step plugin, which looks only for the key, runs the command in the batch
    script; run_training.py's srun --overlap then starts the only step.
    """
    def resource(wildcards):
        point = SWEEP_POINTS[wildcards.point]
        return rank_job_resources(point.nodes, point.ranks).get(name, "")

    return resource


def sweep_baseline_inputs(point, repeat):
    """Return the storage baseline result of one sweep point and repeat, when the baseline is enabled."""
    if config["baseline"]["enabled"]:
        return [str(SWEEP_DIR / point / repeat / "baseline" / "baseline.json")]
    return []


def metrics_manifest_arguments(wildcards):
    """--manifest for darshan_metrics.py when the mode's job wrote one."""
    mode = wildcards.mode
    if mode in EXISTING:
        manifest = EXISTING[mode].get("manifest")
        return ["--manifest", manifest] if manifest else []
    return ["--manifest", str(manifest_path(mode))]


def summary_html_of(mode):
    """HTML summaries to render for a mode, chosen by summaries.html, once its logs are located."""
    choice = config["summaries"]["html"]
    if choice == "none":
        return []
    import pandas as pd

    table = pd.read_csv(checkpoints.locate_logs.get(mode=mode).output.processes)
    table = table[table["error"].isna() | (table["error"] == "")]
    if choice == "checkpoint":
        table = table[table["checkpoint_bytes_written"].fillna(0) + table["checkpoint_bytes_read"].fillna(0) > 0]
    return [str(darshan_dir(mode) / "summaries" / f"{Path(name).stem}.html") for name in table["log"]]


def shared_text_files():
    """Text outputs that the redact rule copies into results/shared/ with private names replaced."""
    files = [str(RESULTS / "summary.csv"), str(RESULTS / "summary.md")]
    for mode in MODES:
        files += [str(processes_path(mode)), str(darshan_dir(mode) / "locate.json"),
                  str(metrics_path(mode)), str(metrics_path(mode).with_name("per_process.csv"))]
    return files


def baseline_inputs():
    """The storage baseline's result, when it is enabled and some mode is run here."""
    if config["baseline"]["enabled"] and RUN_MODES:
        return [str(RESULTS / "baseline" / "baseline.json")]
    return []


def build_report():
    """Build REPORT_PATH (results/report.html, or results/sweep/report.html) with `snakemake --report` once every final output exists.

    Snakemake builds a report only in a run of its own, so this starts one with the
    same config after a successful run. A failure is logged, never raised: the
    results are complete without the report.
    """
    import subprocess

    import yaml

    if not all(Path(path).exists() for path in final_outputs()):
        return
    LOGS.mkdir(parents=True, exist_ok=True)
    config_file = LOGS / "report_config.yaml"
    config_file.write_text(yaml.safe_dump(dict(config)))
    report_log_path = LOGS / ("sweep" if SWEEP else "") / "report.log"
    report_log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(Path(workflow.basedir) / "Snakefile"),
               "--directory", ".", "--configfile", str(config_file), "--report", str(REPORT_PATH)]
    with open(report_log_path, "w") as report_log:
        completed = subprocess.run(command, stdout=report_log, stderr=subprocess.STDOUT, check=False)
    if completed.returncode == 0:
        print(f"Report: {REPORT_PATH}")
    else:
        print(f"Building {REPORT_PATH} failed; see {report_log_path}")


def final_outputs():
    if SWEEP:
        # SWEEP_TARGETS (rules/sweep.smk): the sweep's tables and plot.
        return SWEEP_TARGETS
    # REPORT_TARGETS (rules/report.smk): plots, insights and the per-log summaries of the report.
    # results/shared contains the redacted copies that redact (rules/darshan.smk) writes when redact.enabled is true.
    shared = [str(RESULTS / "shared")] if str(config["redact"]["enabled"]).lower() == "true" else []
    return [str(RESULTS / "summary.csv"), str(RESULTS / "summary.md")] + REPORT_TARGETS + shared
