"""The Slurm path: the profiles, the sbatch options they give, and whole runs on a Slurm cluster.

The profile and sbatch tests need no Slurm: they read Snakemake's dry run and build
each job's sbatch command with snakemake-executor-plugin-slurm's own code. The
end-to-end tests submit every job through the plugin to the one-node cluster of
.ci/slurm-cluster.sh and are skipped when it is not running. With the four modes of
config/config.yaml and every analysis job submitted to Slurm they took about nine
minutes on 2 cores.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

import slurm_settings

log = logging.getLogger(__name__)

REPOSITORY = Path(__file__).resolve().parent.parent
PERLMUTTER_PROFILE = Path("profiles") / "perlmutter"
LOCAL_PROFILE = Path("tests") / "profiles" / "slurm-local"
# What a working copy of the workflow needs, relative to the repository.
WORKFLOW_FILES = ("Snakefile", "rules", "workflow", "config", "profiles", "tests/profiles")
MODES = tuple(yaml.safe_load((REPOSITORY / "config" / "config.yaml").read_text())["modes"])
# The mode whose training job the failure scenario breaks.
FAILING_MODE = "dcp"
LOCAL_ACCOUNT = "ckptio"
TEST_ACCOUNT = "m0000"

# Snakemake's line for a submitted job, such as
# "Job 7 has been submitted with SLURM jobid 17 (log: /w/.snakemake/slurm_logs/rule_train/dcp/17.log)."
SUBMITTED = re.compile(r"has been submitted with SLURM jobid (\d+) \(log: (\S+?)\)")
JOB_HEADER = re.compile(r"^(local)?rule (\w+):$")

DRY_RUN_TIMEOUT_S = 180
RUN_TIMEOUT_S = 600


# ---- running Snakemake ------------------------------------------------------


@dataclass
class Submission:
    """One job that the plugin submitted: its Slurm job id, rule and wildcards."""

    job_id: str
    rule: str
    wildcards: str


@dataclass
class SnakemakeRun:
    """Exit code and combined output of one Snakemake process."""

    returncode: int
    output: str
    submissions: list[Submission] = field(default_factory=list)

    def train_job_ids(self) -> dict[str, str]:
        """Return the Slurm job id of each mode's training job in this run."""
        return {item.wildcards: item.job_id for item in self.submissions if item.rule == "train"}


def parse_submissions(output: str) -> list[Submission]:
    """Read the submitted jobs from Snakemake's output.

    The plugin names each Slurm log .../slurm_logs/rule_<rule>/<wildcards>/<jobid>.log,
    without the wildcards directory for a rule that has none.
    """
    submissions = []
    for job_id, log_path in SUBMITTED.findall(output):
        parts = Path(log_path).parts
        rule_index = max(index for index, part in enumerate(parts) if part.startswith("rule_"))
        wildcards = parts[rule_index + 1] if rule_index + 2 < len(parts) else ""
        submissions.append(Submission(job_id, parts[rule_index].removeprefix("rule_"), wildcards))
    return submissions


def copy_workflow(destination: Path) -> Path:
    """Copy the workflow's files into ``destination``, a working copy to run Snakemake in."""
    ignore = shutil.ignore_patterns("__pycache__", ".snakemake", "results", "logs")
    for name in WORKFLOW_FILES:
        source = REPOSITORY / name
        if source.is_dir():
            shutil.copytree(source, destination / name, ignore=ignore)
        else:
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


def cancel_jobs(job_ids: list[str]) -> None:
    """Cancel Slurm jobs that a stopped Snakemake left behind."""
    if job_ids and shutil.which("scancel"):
        subprocess.run(["scancel", *job_ids], capture_output=True, timeout=60, check=False)


def run_snakemake(workdir: Path, arguments: list[str], timeout_s: float,
                  env: dict[str, str] | None = None, timeout_hint: str = "") -> SnakemakeRun:
    """Run Snakemake in ``workdir`` and return its exit code, output and submitted jobs.

    Snakemake under the Slurm plugin can wait forever when status queries fail, and
    only SIGKILL ends it then, so a run past ``timeout_s`` gets SIGKILL for its whole
    process group, its Slurm jobs are cancelled and the test fails.
    """
    command = [sys.executable, "-m", "snakemake", *arguments]
    log.info("running %s in %s", shlex.join(command), workdir)
    process = subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout_s)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        cancel_jobs([item.job_id for item in parse_submissions(output)])
        timed_out = True
    if timed_out:
        pytest.fail(f"`{shlex.join(command)}` timed out after {timeout_s} s in {workdir}. {timeout_hint}"
                    f"\nLast output:\n{output[-4000:]}")
    (workdir / f"snakemake-{len(list(workdir.glob('snakemake-*.out')))}.out").write_text(output)
    return SnakemakeRun(process.returncode, output, parse_submissions(output))


# ---- dry runs and sbatch commands -------------------------------------------


@dataclass
class DryRunJob:
    """A job of a dry run: its rule, whether it runs locally, and its evaluated resources."""

    rule: str
    local: bool
    wildcards: str
    threads: int
    resources: dict[str, Any]


def parse_resources(text: str) -> dict[str, Any]:
    """Parse ``name=value, name=value`` from a dry run's ``resources:`` line."""
    resources: dict[str, Any] = {}
    for item in text.split(", "):
        name, _, value = item.partition("=")
        resources[name] = int(value) if value.isdigit() else value
    return resources


def parse_dry_run(output: str) -> list[DryRunJob]:
    """Return every job that a ``snakemake -n`` output lists."""
    jobs: list[DryRunJob] = []
    current: dict[str, str] | None = None
    header: re.Match[str] | None = None
    for line in [*output.splitlines(), ""]:
        match = JOB_HEADER.match(line)
        if match:
            header, current = match, {}
        elif current is not None and line.startswith("    ") and ": " in line:
            key, _, value = line.strip().partition(": ")
            current[key] = value
        elif current is not None and header is not None:
            jobs.append(DryRunJob(rule=header.group(2), local=bool(header.group(1)),
                                  wildcards=current.get("wildcards", ""),
                                  threads=int(current.get("threads", "1")),
                                  resources=parse_resources(current.get("resources", ""))))
            current = header = None
    return jobs


class AttributeResources(dict):
    """Job resources with the attribute access that the plugin uses (``job.resources.runtime``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as error:
            raise AttributeError(name) from error


def sbatch_command(job: DryRunJob) -> str:
    """Build the sbatch command that snakemake-executor-plugin-slurm would run for a job.

    Uses the plugin's get_submit_command and set_gres_string as its Executor.run_job
    does. The account is passed as run_job formats it. The partition stays empty,
    where run_job would add the cluster's default partition that sinfo reports.
    """
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    stub = SimpleNamespace(name=job.rule, threads=job.threads, wildcards=job.wildcards,
                           resources=AttributeResources(job.resources), is_group=lambda: False)
    params = {
        "run_uuid": "run-uuid",
        "slurm_logfile": f"slurm_logs/rule_{job.rule}/%j.log",
        "comment_str": f"rule_{job.rule}",
        "account": f" -A {shlex.quote(str(job.resources['slurm_account']))}",
        "partition": "",
        "workdir": ".",
    }
    return get_submit_command(stub, params) + set_gres_string(stub)


def sbatch_options(command: str) -> dict[str, str]:
    """Map each option of an sbatch command line to its value ("" for a flag)."""
    words = shlex.split(command)[1:]
    options: dict[str, str] = {}
    index = 0
    while index < len(words):
        word = words[index]
        if word.startswith("--") and "=" in word:
            name, _, value = word.partition("=")
        elif index + 1 < len(words) and not words[index + 1].startswith("-"):
            name, value = word, words[index + 1]
            index += 1
        else:
            name, value = word, ""
        options[name] = value
        index += 1
    return options


def dry_run(workdir: Path, profile: Path, tmp_path: Path, *extra: str) -> SnakemakeRun:
    """Run ``snakemake -n`` with a profile, with $SCRATCH pointing into ``tmp_path``."""
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    env = {**os.environ, "SCRATCH": str(scratch)}
    return run_snakemake(workdir, ["-n", "--profile", str(profile), *extra], DRY_RUN_TIMEOUT_S, env)


def submitted_jobs(run: SnakemakeRun) -> list[DryRunJob]:
    """Return the jobs of a successful dry run that the plugin would submit to Slurm."""
    assert run.returncode == 0, f"dry run failed:\n{run.output[-4000:]}"
    return [job for job in parse_dry_run(run.output) if not job.local]


# ---- profiles -----------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def key_structure(value: Any) -> Any:
    """Replace every leaf of a YAML document by its kind, keeping the keys."""
    if isinstance(value, dict):
        return {key: key_structure(item) for key, item in value.items()}
    if isinstance(value, list):
        return "list"
    return "scalar"


@pytest.mark.parametrize("name", ["config.yaml", "workflow-config.yaml"])
def test_profiles_have_same_keys(name: str) -> None:
    perlmutter = load_yaml(REPOSITORY / PERLMUTTER_PROFILE / name)
    local = load_yaml(REPOSITORY / LOCAL_PROFILE / name)
    assert key_structure(local) == key_structure(perlmutter)


@pytest.mark.parametrize("profile", [PERLMUTTER_PROFILE, LOCAL_PROFILE])
def test_profile_configfile_exists(profile: Path) -> None:
    settings = load_yaml(REPOSITORY / profile / "config.yaml")
    assert (REPOSITORY / profile / settings["configfile"]).is_file()


def test_perlmutter_profile_site_values() -> None:
    settings = load_yaml(REPOSITORY / PERLMUTTER_PROFILE / "config.yaml")
    workflow_config = load_yaml(REPOSITORY / PERLMUTTER_PROFILE / "workflow-config.yaml")
    defaults = settings["default-resources"]

    assert settings["executor"] == "slurm"
    assert settings["use-envmodules"] is True
    assert defaults["slurm_account"] == slurm_settings.ACCOUNT_PLACEHOLDER
    assert defaults["constraint"] == "gpu"
    assert defaults["qos"] == "debug"
    assert defaults["runtime"] == 30
    assert workflow_config["launch"]["device"] == "cuda"
    assert workflow_config["launch"]["ranks_per_node"] == 4
    assert set(workflow_config["launch"]["envmodules"]) >= {"pytorch", "darshan"}
    assert workflow_config["checkpoint"]["root"].startswith("$SCRATCH/")
    assert workflow_config["darshan"]["enabled"] is True


# ---- account check --------------------------------------------------------------


@pytest.mark.parametrize("value", [slurm_settings.ACCOUNT_PLACEHOLDER, "", "  ", "'SET-ME-nersc-project'"])
def test_check_account_rejects_placeholder(value: str) -> None:
    with pytest.raises(slurm_settings.SlurmSettingsError, match="slurm_account"):
        slurm_settings.check_account(value, "default-resources")


@pytest.mark.parametrize("value", [None, "m1234", "ckptio"])
def test_check_account_accepts_real_account(value: str | None) -> None:
    slurm_settings.check_account(value, "default-resources")


def test_check_slurm_account_reads_snakemake_resources() -> None:
    from snakemake.resources import Resources

    defaults = Resources.parse(["slurm_account=m1234", "runtime=30"], allow_expressions=True)
    placeholder = Resources.parse([f"slurm_account={slurm_settings.ACCOUNT_PLACEHOLDER}"], allow_expressions=True)
    workflow = SimpleNamespace(resource_settings=SimpleNamespace(
        default_resources=defaults, overwrite_resources={"train": placeholder}))

    with pytest.raises(slurm_settings.SlurmSettingsError, match="set-resources of rule train"):
        slurm_settings.check_slurm_account(workflow)


def test_check_slurm_account_without_account() -> None:
    workflow = SimpleNamespace(resource_settings=SimpleNamespace(default_resources=None, overwrite_resources={}))
    slurm_settings.check_slurm_account(workflow)


# ---- sbatch options from the dry run ----------------------------------------------


def test_perlmutter_placeholder_account_stops_run(tmp_path: Path) -> None:
    workdir = copy_workflow(tmp_path / "workflow")
    run = dry_run(workdir, PERLMUTTER_PROFILE, tmp_path)

    assert run.returncode != 0
    assert "slurm_account" in run.output
    assert slurm_settings.ACCOUNT_PLACEHOLDER in run.output
    assert "profiles/perlmutter/config.yaml" in run.output


def test_perlmutter_sbatch_options(tmp_path: Path) -> None:
    workdir = copy_workflow(tmp_path / "workflow")
    profile_file = workdir / PERLMUTTER_PROFILE / "config.yaml"
    profile_file.write_text(profile_file.read_text().replace(slurm_settings.ACCOUNT_PLACEHOLDER, TEST_ACCOUNT))
    # Darshan is required on Perlmutter (darshan.enabled: true) but not installed here.
    jobs = submitted_jobs(dry_run(workdir, PERLMUTTER_PROFILE, tmp_path, "--config", 'darshan={"enabled": "auto"}'))
    train = [job for job in jobs if job.rule == "train"]

    assert sorted(job.wildcards for job in train) == sorted(f"mode={mode}" for mode in MODES)
    for job in jobs:
        options = sbatch_options(sbatch_command(job))
        assert options["-A"] == TEST_ACCOUNT, job.rule
        assert options["--qos"] == "debug", job.rule
        assert options["-C"] == "gpu", job.rule
        assert options["-t"] == "30", job.rule
    for job in train:
        options = sbatch_options(sbatch_command(job))
        assert options["--nodes"] == "1"
        assert options["--ntasks"] == "4"
        assert options["--gpus"] == "4"
        assert options["--cpus-per-task"] == "32"
        assert "--ntasks-per-gpu" not in options
        assert "--mem" not in options
        assert job.resources["mpi"] == "srun"


def test_local_profile_sbatch_options(tmp_path: Path) -> None:
    workdir = copy_workflow(tmp_path / "workflow")
    jobs = submitted_jobs(dry_run(workdir, LOCAL_PROFILE, tmp_path))
    train = [job for job in jobs if job.rule == "train"]

    assert len(train) == len(MODES)
    for job in train:
        options = sbatch_options(sbatch_command(job))
        assert options["-A"] == LOCAL_ACCOUNT
        assert options["--qos"] == "normal"
        assert options["-C"] == "cpu"
        assert options["-t"] == "10"
        assert options["--ntasks"] == "2"
        assert options["--cpus-per-task"] == "1"
        assert options["--mem"] == "4000"
        assert "--gpus" not in options
        assert job.resources["mpi"] == "srun"


def test_single_rank_job_has_no_mpi(tmp_path: Path) -> None:
    workdir = copy_workflow(tmp_path / "workflow")
    override = tmp_path / "one-rank.yaml"
    override.write_text("launch:\n  ranks_per_node: 1\n")
    run = dry_run(workdir, LOCAL_PROFILE, tmp_path, "--configfile",
                  str(LOCAL_PROFILE / "workflow-config.yaml"), str(override))
    train = [job for job in submitted_jobs(run) if job.rule == "train"]

    assert train
    for job in train:
        assert "mpi" not in job.resources
        assert sbatch_options(sbatch_command(job))["--ntasks"] == "1"


def test_sweep_jobs_get_point_ranks(tmp_path: Path) -> None:
    workdir = copy_workflow(tmp_path / "workflow")
    run = dry_run(workdir, LOCAL_PROFILE, tmp_path, "--configfile",
                  str(LOCAL_PROFILE / "workflow-config.yaml"), str(REPOSITORY / "config" / "sweep.yaml"))
    jobs = [job for job in submitted_jobs(run) if job.rule in ("sweep_train", "sweep_storage_baseline")]
    train = [job for job in jobs if job.rule == "sweep_train"]

    assert len(train) == 3 * len(MODES) * 3
    assert len(jobs) - len(train) == 3 * 3
    for job in jobs:
        ranks = int(job.wildcards.split("_r")[1].split("_")[0])
        options = sbatch_options(sbatch_command(job))
        assert options["--ntasks"] == str(ranks), job.wildcards
        assert options["--nodes"] == "1"
        if ranks == 1:
            assert not job.resources.get("mpi"), job.wildcards
        else:
            assert job.resources["mpi"] == "srun", job.wildcards


# ---- the local Slurm cluster --------------------------------------------------------


def slurm_cluster_problem() -> str | None:
    """Return why the local Slurm cluster cannot run the tests, or None when it can."""
    for tool in ("sinfo", "sbatch", "sacct", "sacctmgr"):
        if shutil.which(tool) is None:
            return f"{tool} is not on PATH"
    # Without a config file the Slurm commands look for a controller in DNS instead.
    config = Path(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf"))
    if not config.is_file():
        return f"the Slurm config {config} does not exist"
    try:
        sinfo = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30, check=False)
    except subprocess.TimeoutExpired:
        return "sinfo timed out after 30 s"
    if sinfo.returncode != 0:
        return f"sinfo failed: {sinfo.stderr.strip()}"
    states = sinfo.stdout.split()
    if not any(state.rstrip("*~#") in ("idle", "mixed", "allocated", "completing") for state in states):
        return f"no node is up (sinfo reports {states or 'no nodes'})"
    users = subprocess.run(["sacctmgr", "-n", "-P", "list", "association", f"account={LOCAL_ACCOUNT}", "format=user"],
                           capture_output=True, text=True, timeout=30, check=False)
    if users.returncode != 0 or not users.stdout.strip():
        return f"the Slurm account {LOCAL_ACCOUNT!r} is missing ({users.stderr.strip() or 'no association'})"
    return None


@pytest.fixture(scope="module")
def slurm_cluster() -> None:
    """Skip the test unless the cluster of .ci/slurm-cluster.sh is up.

    With CKPTIO_REQUIRE_SLURM=1 (set by .ci/run, which starts the cluster) the test
    fails instead, so that a broken cluster cannot pass as skipped tests.
    """
    problem = slurm_cluster_problem()
    if not problem:
        return
    message = f"local Slurm cluster not available: {problem}. Start it with `.ci/slurm-cluster.sh start` (as root)."
    if os.environ.get("CKPTIO_REQUIRE_SLURM") == "1":
        pytest.fail(message)
    pytest.skip(message)


def sacct_rows(job_id: str) -> list[dict[str, str]]:
    """Return sacct's rows for a job and its steps."""
    completed = subprocess.run(
        ["sacct", "-j", job_id, "-P", "--format=JobID,JobName,State,Account,NTasks,Comment%200"],
        capture_output=True, text=True, timeout=60, check=True)
    return list(csv.DictReader(completed.stdout.splitlines(), delimiter="|"))


def run_id(workdir: Path) -> str:
    return load_yaml(workdir / "config" / "config.yaml")["run_id"]


@dataclass
class FailAndRerun:
    """Working copy and the two runs of the failure scenario."""

    workdir: Path
    blocker: Path
    first: SnakemakeRun
    second: SnakemakeRun
    # Modification times of the other modes' manifests after the first run.
    manifest_mtimes: dict[str, int]


def manifest_path(workdir: Path, mode: str) -> Path:
    return workdir / "results" / mode / "train" / "manifest.json"


def failed_jobs(output: str) -> set[tuple[str, str]]:
    """Return (rule, mode) of every "Error in rule" report in Snakemake's output.

    The mode is the directory of the job's output or log path that names a mode, or
    "" for a job of no single mode. The reports of the job's own Snakemake, which
    show-failed-logs prints from the Slurm log, repeat the same jobs.
    """
    failures = set()
    for block in output.split("Error in rule ")[1:]:
        rule, _, body = block.partition(":")
        paths = re.findall(r"^\s+(?:output|log): (.*)$", body.split("\n    shell:", 1)[0], re.MULTILINE)
        parts = {part for line in paths for path in line.split(", ") for part in Path(path).parts}
        modes = sorted(parts & set(MODES))
        failures.add((rule, modes[0] if len(modes) == 1 else ""))
    return failures


@pytest.fixture(scope="module")
def fail_and_rerun(slurm_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> FailAndRerun:
    """Run all modes through Slurm with one mode's training job failing, then again after the fix.

    A file where that mode's checkpoint directory belongs makes its training job fail
    at run time, inside its Slurm job. The first run uses --keep-going. The second run,
    after the file is removed, must finish the workflow.
    """
    workdir = copy_workflow(tmp_path_factory.mktemp("slurm-workflow"))
    checkpoint_root = load_yaml(workdir / LOCAL_PROFILE / "workflow-config.yaml")["checkpoint"]["root"]
    blocker = workdir / checkpoint_root / run_id(workdir) / FAILING_MODE
    blocker.parent.mkdir(parents=True)
    blocker.write_text(f"a file where the {FAILING_MODE} checkpoint directory belongs\n")
    arguments = ["--profile", str(LOCAL_PROFILE), "--executor", "slurm"]

    first = run_snakemake(workdir, [*arguments, "--keep-going"], RUN_TIMEOUT_S)
    manifest_mtimes = {mode: manifest_path(workdir, mode).stat().st_mtime_ns
                       for mode in MODES if mode != FAILING_MODE and manifest_path(workdir, mode).is_file()}
    blocker.unlink()
    second = run_snakemake(workdir, arguments, RUN_TIMEOUT_S)
    return FailAndRerun(workdir, blocker, first, second, manifest_mtimes)


@pytest.mark.slow
@pytest.mark.slurm
def test_failed_mode_reports_job_id_and_log(fail_and_rerun: FailAndRerun) -> None:
    first = fail_and_rerun.first
    job_id = first.train_job_ids()[FAILING_MODE]

    assert first.returncode != 0
    assert f"SLURM-job '{job_id}' failed" in first.output
    assert f"logs/{FAILING_MODE}/train.log" in first.output
    # show-failed-logs prints the rule's log, which names the blocked path.
    assert str(fail_and_rerun.blocker) in first.output
    assert sacct_rows(job_id)[0]["State"] == "FAILED"


@pytest.mark.slow
@pytest.mark.slurm
def test_keep_going_finishes_other_modes(fail_and_rerun: FailAndRerun) -> None:
    first = fail_and_rerun.first
    trained = [item.wildcards for item in first.submissions if item.rule == "train"]

    assert sorted(trained) == sorted(MODES)
    assert failed_jobs(first.output) == {("train", FAILING_MODE)}, first.output[-4000:]
    assert sorted(fail_and_rerun.manifest_mtimes) == sorted(set(MODES) - {FAILING_MODE})


@pytest.mark.slow
@pytest.mark.slurm
def test_rerun_repeats_only_failed_mode(fail_and_rerun: FailAndRerun) -> None:
    second = fail_and_rerun.second
    workdir = fail_and_rerun.workdir

    assert second.returncode == 0, second.output[-4000:]
    assert list(second.train_job_ids()) == [FAILING_MODE]
    for mode, mtime in fail_and_rerun.manifest_mtimes.items():
        assert manifest_path(workdir, mode).stat().st_mtime_ns == mtime, mode


@pytest.mark.slow
@pytest.mark.slurm
def test_every_mode_trained_in_slurm_job(fail_and_rerun: FailAndRerun) -> None:
    job_ids = {**fail_and_rerun.first.train_job_ids(), **fail_and_rerun.second.train_job_ids()}
    launch = load_yaml(REPOSITORY / LOCAL_PROFILE / "workflow-config.yaml")["launch"]
    ranks = str(launch["nodes"] * launch["ranks_per_node"])

    for mode in MODES:
        manifest = json.loads(manifest_path(fail_and_rerun.workdir, mode).read_text())
        rows = sacct_rows(job_ids[mode])
        steps = [row for row in rows if row["JobID"].startswith(f"{job_ids[mode]}.") and
                 not row["JobID"].endswith((".batch", ".extern"))]
        assert manifest["job_id"] == job_ids[mode], mode
        assert manifest["launcher"] == "srun", mode
        assert rows[0]["State"] == "COMPLETED", mode
        assert rows[0]["Account"] == LOCAL_ACCOUNT, mode
        assert rows[0]["Comment"] == f"rule_train_wildcards_{mode}", mode
        assert [row["NTasks"] for row in steps] == [ranks], mode


@pytest.mark.slow
@pytest.mark.slurm
def test_summary_lists_every_mode(fail_and_rerun: FailAndRerun) -> None:
    with open(fail_and_rerun.workdir / "results" / "summary.csv", newline="") as table:
        modes = [row["mode"] for row in csv.DictReader(table)]

    assert sorted(modes) == sorted(MODES)


def run_with_override(workdir: Path, override: str, until: str, timeout_s: float) -> SnakemakeRun:
    """Run the workflow copy on the local cluster, with ``override`` as a config file on top, up to rule ``until``."""
    override_file = workdir / "override.yaml"
    override_file.write_text(override)
    return run_snakemake(workdir, ["--profile", str(LOCAL_PROFILE), "--configfile",
                                   str(LOCAL_PROFILE / "workflow-config.yaml"), str(override_file),
                                   "--until", until], timeout_s,
                         timeout_hint="An srun without --overlap inside the plugin's step waits for its CPUs forever.")


def job_steps(job_id: str) -> list[dict[str, str]]:
    """Return sacct's rows of a job's numbered steps (not .batch or .extern)."""
    return [row for row in sacct_rows(job_id) if re.fullmatch(rf"{job_id}\.\d+", row["JobID"])]


@pytest.mark.slow
@pytest.mark.slurm
def test_single_rank_job_runs_in_plugin_step(slurm_cluster: None, tmp_path: Path) -> None:
    """A one-rank job has no mpi resource, so run_training.py's srun runs inside the plugin's step."""
    workdir = copy_workflow(tmp_path / "workflow")
    run = run_with_override(workdir, "modes: [torch_save]\nlaunch:\n  ranks_per_node: 1\n", "train", 180)
    assert run.returncode == 0, run.output[-4000:]

    job_id = run.train_job_ids()["torch_save"]
    manifest = json.loads((workdir / "results" / "torch_save" / "train" / "manifest.json").read_text())
    steps = job_steps(job_id)
    assert manifest["job_id"] == job_id
    assert manifest["world_size"] == 1
    # The plugin's srun step and run_training.py's srun step.
    assert len(steps) == 2


@pytest.mark.slow
@pytest.mark.slurm
def test_sweep_runs_points_on_slurm(slurm_cluster: None, tmp_path: Path) -> None:
    """Sweep jobs of one and two ranks, each with as many tasks as ranks and its own srun step."""
    workdir = copy_workflow(tmp_path / "workflow")
    run = run_with_override(workdir, "modes: [torch_save]\nsweep:\n  enabled: true\n  ranks_per_node: [1, 2]\n"
                            "  repeats: 1\n", "sweep_train", 300)
    assert run.returncode == 0, run.output[-4000:]

    for ranks in (1, 2):
        manifest = json.loads((workdir / "results" / "sweep" / f"n1_r{ranks}_small_vit" / "repeat1" / "torch_save"
                               / "train" / "manifest.json").read_text())
        assert manifest["launcher"] == "srun"
        assert manifest["world_size"] == ranks
        assert manifest["integrity"] == "ok"
        steps = job_steps(manifest["job_id"])
        # The batch script runs run_training.py, whose srun starts the only step (mpi="" for one rank).
        assert [row["NTasks"] for row in steps] == [str(ranks)]
