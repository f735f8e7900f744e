"""Damaged, stray and odd Darshan logs through locate_logs, darshan_metrics and summary_table.

Each case builds a log directory from the real logs in tests/data and runs the
three programs' main() as the rules do. It checks the error in processes.csv and
the flag in the metrics and in summary.csv. It also checks that the rest of the
table is still built from the logs that can be used.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
import pytest

import darshan_metrics
import locate_logs
import summary_table
from conftest import DATA, REPOSITORY, bytes_on_disk_by_rank, checkpoint_files, manifest_for, write_json
from test_workflow import run_snakemake

DCP = DATA / "dcp" / "logs"
TORCH_SAVE = DATA / "torch_save" / "logs"
RANK0 = "0_python3_id4701-4701_12-4-71839-1036433577711396412_1.darshan"
RANK1 = "0_python3_id4702-4702_12-4-71839-14348342164642205994_1.darshan"
LAUNCHER = "0_python3_id4698-4698_12-4-71838-3889340496548242290_1.darshan"
TORCH_SAVE_LOGS = sorted(log.name for log in TORCH_SAVE.iterdir())
# A name of the form Darshan gives, for files that are not the log they claim to be.
STRAY = "0_python3_id9101-9101_12-4-71839-1_1.darshan"
RANK0_BYTES = bytes_on_disk_by_rank("dcp")[0]
DCP_BYTES = sum(size for size, _ in checkpoint_files("dcp"))


@dataclass
class Setup:
    """What a case hands to locate_logs besides the log directory."""

    manifest: dict | None = None
    checkpoint_dir: str | None = None


@dataclass
class Case:
    """One kind of bad input and what the chain must report about it.

    ``errors`` maps a log's path relative to the log directory to a part of its
    error in processes.csv; every other row must have no error. ``flags`` are
    parts of the metrics flags. ``checkpoint_bytes`` is what the usable logs
    still count under the checkpoint directory.
    """

    name: str
    build: Callable[[Path], Setup]
    errors: dict[str, str]
    flags: list[str]
    checkpoint_bytes: int
    absent: list[str] = field(default_factory=list)


def copy(source: Path, logs: Path, *names: str) -> None:
    """Copy logs of tests/data into the case's log directory."""
    logs.mkdir(parents=True, exist_ok=True)
    for name in names or [path.name for path in source.iterdir()]:
        shutil.copy2(source / name, logs / name)


def with_rank0(extra: Callable[[Path], None]) -> Callable[[Path], Setup]:
    """Build a directory of the dcp rank 0 log plus whatever ``extra`` adds."""

    def build(logs: Path) -> Setup:
        copy(DCP, logs, RANK0)
        extra(logs)
        return Setup()

    return build


def truncated_rank1(size: Callable[[int], int]) -> Callable[[Path], Setup]:
    """Build the dcp job with rank 1's log cut to ``size(full size)`` bytes, as an interrupted copy leaves it."""

    def build(logs: Path) -> Setup:
        copy(DCP, logs)
        data = (DCP / RANK1).read_bytes()
        (logs / RANK1).write_bytes(data[:size(len(data))])
        return Setup()

    return build


def whole_job(source: Path, checkpoint_dir: str | None = None) -> Callable[[Path], Setup]:
    def build(logs: Path) -> Setup:
        copy(source, logs)
        return Setup(checkpoint_dir=checkpoint_dir)

    return build


def two_jobs_without_manifest(logs: Path) -> Setup:
    copy(DCP, logs)
    copy(TORCH_SAVE, logs)
    return Setup()


def two_jobs_with_manifest(logs: Path) -> Setup:
    """The dcp job's logs and a torch_save job's, with the dcp manifest giving when dcp ran."""
    copy(DCP, logs)
    copy(TORCH_SAVE, logs)
    manifest = manifest_for("dcp", logs)
    manifest["start_utc"], manifest["end_utc"] = "2026-12-04T19:57:17Z", "2026-12-04T19:57:27Z"
    return Setup(manifest=manifest)


def two_slurm_jobs(logs: Path) -> Setup:
    """The dcp logs as Slurm job 777 and the torch_save logs as job 888, in one site log directory."""
    logs.mkdir(parents=True)
    for source, job_id in ((DCP, 777), (TORCH_SAVE, 888)):
        for log in source.iterdir():
            pid = log.name.split("_id")[1].split("-")[0]
            shutil.copy2(log, logs / log.name.replace(f"_id{pid}-", f"_id{job_id}-"))
    manifest = manifest_for("dcp", logs)
    manifest["job_id"] = "777"
    return Setup(manifest=manifest)


def launcher_only(logs: Path) -> Setup:
    """A torch_save launcher's log: a real log without a single checkpoint record."""
    copy(TORCH_SAVE, logs, TORCH_SAVE_LOGS[0])
    return Setup()


def no_logs(logs: Path) -> Setup:
    logs.mkdir()
    return Setup()


def gzip_rank1(logs: Path) -> None:
    (logs / f"{RANK1}.gz").write_bytes(gzip.compress((DCP / RANK1).read_bytes()))


def leftover_partial(logs: Path) -> None:
    # What a process killed while Darshan wrote its log leaves: the start of a log under the _partial name.
    (logs / "0_python3_id4702-4702_12-4-71839-14348342164642205994.darshan_partial").write_bytes(
        (DCP / RANK1).read_bytes()[:3000])


def text_and_readme(logs: Path) -> None:
    (logs / "notes.darshan").write_text("rank 1 log went missing on the way\n")
    (logs / "README.txt").write_text("logs of the dcp run\n")


def duplicate_in_subdirectory(logs: Path) -> None:
    copy(DCP, logs / "again", RANK0)


CASES = [
    Case("empty file", with_rank0(lambda logs: (logs / STRAY).write_bytes(b"")),
         {STRAY: "empty file, not a Darshan log"}, ["left out: empty file"], RANK0_BYTES),
    Case("truncated in the header", truncated_rank1(lambda size: 100),
         {RANK1: "truncated: 100 bytes, shorter than the 1,328-byte header"}, ["left out: truncated"], RANK0_BYTES),
    Case("truncated in the job record", truncated_rank1(lambda size: 1400),
         {RANK1: "truncated: its header maps data up to byte 176,864 but the file has 1,400 bytes"},
         ["left out: truncated"], RANK0_BYTES),
    Case("truncated in the records", truncated_rank1(lambda size: size // 2),
         {RANK1: "but the file has 88,432 bytes"}, ["left out: truncated"], RANK0_BYTES),
    Case("last byte missing", truncated_rank1(lambda size: size - 1),
         {RANK1: "but the file has 176,863 bytes"}, ["left out: truncated"], RANK0_BYTES),
    Case("text with a log name", with_rank0(lambda logs: (logs / STRAY).write_text("not a log\n")),
         {STRAY: "not a Darshan log: it does not begin with a Darshan log format version"},
         ["left out: not a Darshan log"], RANK0_BYTES),
    Case("text named .darshan", with_rank0(text_and_readme),
         {"notes.darshan": "not a Darshan log: it does not begin with a Darshan log format version"},
         ["log notes.darshan left out"], RANK0_BYTES, absent=["README.txt"]),
    Case("gzip-compressed log", with_rank0(gzip_rank1),
         {f"{RANK1}.gz": "compressed with gzip"}, ["left out: not a Darshan log but a file compressed"], RANK0_BYTES),
    Case("renamed log", with_rank0(lambda logs: shutil.copy2(DCP / RANK1, logs / "rank1.darshan")),
         {"rank1.darshan": "a Darshan log (Darshan job id 4702"}, ["whose file name is not a Darshan log name"],
         RANK0_BYTES),
    Case("second copy in a subdirectory", with_rank0(duplicate_in_subdirectory),
         {f"again/{RANK0}": "a second copy of one log"}, ["counted twice"], RANK0_BYTES),
    Case("dangling symbolic link", with_rank0(lambda logs: (logs / STRAY).symlink_to("/nonexistent/rank.darshan")),
         {STRAY: "dangling symbolic link to /nonexistent/rank.darshan"}, ["left out: dangling"], RANK0_BYTES),
    Case("named pipe", with_rank0(lambda logs: os.mkfifo(logs / STRAY)),
         {STRAY: "a named pipe (FIFO), not a Darshan log file"}, ["left out: a named pipe"], RANK0_BYTES),
    Case("left-over .darshan_partial", with_rank0(leftover_partial),
         {"0_python3_id4702-4702_12-4-71839-14348342164642205994.darshan_partial": "unfinished log (.darshan_partial)"},
         ["left out: unfinished log"], RANK0_BYTES),
    Case("partial module", whole_job(DATA / "partial_default_limit" / "logs", "/tmp/partial-ckpt"),
         {}, ["partial POSIX", "MAX_RECORDS", "no checkpoint I/O recorded under /tmp/partial-ckpt"], 0),
    Case("no POSIX module", whole_job(DATA / "no_posix" / "logs", "/tmp/no-posix-ckpt"),
         {}, ["no POSIX module in", "DARSHAN_MOD_DISABLE", "no checkpoint I/O recorded under /tmp/no-posix-ckpt"], 0),
    Case("no I/O module", whole_job(DATA / "no_io_modules" / "logs"),
         {}, ["no POSIX module in", "no checkpoint directory"], 0),
    Case("no checkpoint records", launcher_only,
         {}, ["no checkpoint directory: no log wrote a checkpoint file"], 0),
    Case("checkpoint directory elsewhere", whole_job(DCP, "/tmp/elsewhere"),
         {}, ["no checkpoint I/O recorded under /tmp/elsewhere"], 0),
    Case("another job, no manifest", two_jobs_without_manifest,
         {name: "log of another job (the processes that ran 2026-12-04 19:56:54 UTC" for name in TORCH_SAVE_LOGS},
         ["3 logs (", "the job that wrote the most checkpoint data"], DCP_BYTES),
    Case("another job, manifest", two_jobs_with_manifest,
         {name: "outside this job's run 2026-12-04 19:57:17 UTC" for name in TORCH_SAVE_LOGS},
         ["left out: log of another job"], DCP_BYTES),
    Case("another Slurm job", two_slurm_jobs,
         {name.replace(f"_id{pid}-", "_id888-"): "its Darshan job id is 888 and this job's is 777"
          for name, pid in zip(TORCH_SAVE_LOGS, ("4406", "4409", "4410"))},
         ["left out: log of another job"], DCP_BYTES),
    Case("empty directory", no_logs,
         {}, ["no Darshan logs found in"], 0),
]


@pytest.fixture(scope="module")
def clean_metrics(tmp_path_factory) -> Path:
    """Metrics of the clean torch_save job: the row of the table that no bad input may break."""
    return run_chain("torch_save", TORCH_SAVE, Setup(), tmp_path_factory.mktemp("clean"))["metrics_path"]


def run_chain(mode: str, logs: Path, setup: Setup, work: Path, clean: Path | None = None) -> dict:
    """Run locate_logs, darshan_metrics and summary_table as the rules do; return their outputs."""
    work.mkdir(parents=True, exist_ok=True)
    locate_arguments = ["--mode", mode, "--logs", str(logs), "--output-dir", str(work / "copied"),
                        "--processes", str(work / "processes.csv"), "--info", str(work / "locate.json")]
    metrics_arguments = ["--mode", mode, "--processes", str(work / "processes.csv"), "--info", str(work / "locate.json"),
                         "--logs-dir", str(work / "copied"), "--output", str(work / "metrics.json"),
                         "--per-process", str(work / "per_process.csv")]
    if setup.manifest is not None:
        manifest = str(write_json(work / "manifest.json", setup.manifest))
        locate_arguments += ["--manifest", manifest]
        metrics_arguments += ["--manifest", manifest]
    if setup.checkpoint_dir:
        locate_arguments += ["--checkpoint-dir", setup.checkpoint_dir]

    assert locate_logs.main(locate_arguments) == 0
    assert darshan_metrics.main(metrics_arguments) == 0
    outputs = {
        "processes": pd.read_csv(work / "processes.csv", keep_default_na=False, dtype={"error": str}),
        "metrics": json.loads((work / "metrics.json").read_text()),
        "metrics_path": work / "metrics.json",
        "copied": sorted(path.name for path in (work / "copied").iterdir()),
    }
    if clean is not None:
        assert summary_table.main(["--metrics", str(clean), str(work / "metrics.json"),
                                   "--csv", str(work / "summary.csv"), "--markdown", str(work / "summary.md")]) == 0
        outputs["summary"] = pd.read_csv(work / "summary.csv", keep_default_na=False)
        outputs["markdown"] = (work / "summary.md").read_text()
    return outputs


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_is_flagged(case, tmp_path, clean_metrics):
    logs = tmp_path / "logs"
    setup = case.build(logs)

    outputs = run_chain("dcp", logs, setup, tmp_path / "work", clean_metrics)

    processes, metrics, summary = outputs["processes"], outputs["metrics"], outputs["summary"]
    errors = {str(Path(row.source).relative_to(logs)): row.error for row in processes.itertuples() if row.error}
    for name, expected in case.errors.items():
        assert name in errors, f"no error row for {name}"
        assert expected in errors[name]
    assert set(errors) == set(case.errors)
    for name in case.absent:
        assert name not in set(processes["log"])
    usable = set(processes.loc[processes["error"] == "", "log"])
    assert set(outputs["copied"]) == usable
    assert metrics["logs"] == len(processes)
    assert metrics["unreadable_logs"] == len(errors)
    for flag in case.flags:
        assert any(flag in text for text in metrics["flags"]), f"no flag with {flag!r} in {metrics['flags']}"
    for name in case.errors:
        assert any(Path(name).name in text for text in metrics["flags"]), f"{name} is not named in a flag"
    assert metrics["checkpoint"]["bytes_written"] == case.checkpoint_bytes
    assert list(summary["mode"]) == ["torch_save", "dcp"]
    assert summary.loc[0, "flags"] == ""
    assert int(summary.loc[0, "bytes_written_checkpoint"]) == sum(size for size, _ in checkpoint_files("torch_save"))
    for flag in case.flags:
        assert flag in summary.loc[1, "flags"]
    assert "dcp" in outputs["markdown"]


def test_unusable_rank_log_named_in_missing_log_error(tmp_path):
    logs = tmp_path / "logs"
    copy(DCP, logs)
    (logs / RANK1).write_bytes((DCP / RANK1).read_bytes()[:5000])

    with pytest.raises(locate_logs.MissingLogError) as error:
        locate_logs.locate("dcp", manifest_for("dcp", logs), None, None, [], 0)

    message = str(error.value)
    assert "rank of rank 1 (PID 4702" in message
    assert f"its log {RANK1} is unusable: truncated" in message


def run_as(user_id: int, command: list[str]) -> subprocess.CompletedProcess:
    """Run a command as another user, with setpriv from util-linux."""
    prefix = ["setpriv", f"--reuid={user_id}", f"--regid={user_id}", "--clear-groups"]
    return subprocess.run(prefix + command, capture_output=True, text=True, timeout=300)


NOBODY = 65534


def can_run_as_nobody() -> bool:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return False
    return run_as(NOBODY, [sys.executable, "-c", "import darshan, pandas"]).returncode == 0


@pytest.fixture
def shared_tmp():
    """A directory under /tmp that another user can enter; tmp_path is private to this user."""
    directory = Path(tempfile.mkdtemp(prefix="damaged-logs-"))
    directory.chmod(0o755)
    yield directory
    for path in [directory, *directory.rglob("*")]:
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o755)
    shutil.rmtree(directory)


def test_unreadable_log_and_directory(shared_tmp, clean_metrics):
    """A log readable by its owner only (as Darshan writes it) and a directory that cannot be listed.

    Root reads any file, so as root locate_logs runs as the user nobody; as any
    other user the modes alone make them unreadable.
    """
    as_root = os.geteuid() == 0
    if as_root and not can_run_as_nobody():
        pytest.skip("running as root without setpriv, or the user nobody cannot run this Python, "
                    "so no user is there for whom the files are unreadable")
    logs, work = shared_tmp / "logs", shared_tmp / "work"
    copy(DCP, logs, RANK0, RANK1)
    copy(DCP, logs / "private", LAUNCHER)
    (logs / RANK1).chmod(0o400 if as_root else 0)
    (logs / "private").chmod(0o700 if as_root else 0)
    work.mkdir(mode=0o777)
    work.chmod(0o777)
    locate_arguments = ["--mode", "dcp", "--logs", str(logs), "--output-dir", str(work / "copied"),
                        "--processes", str(work / "processes.csv"), "--info", str(work / "locate.json")]

    if as_root:
        result = run_as(NOBODY, [sys.executable, str(REPOSITORY / "workflow" / "scripts" / "locate_logs.py"),
                                 *locate_arguments])
        assert result.returncode == 0, result.stderr
    else:
        assert locate_logs.main(locate_arguments) == 0
    assert darshan_metrics.main(["--mode", "dcp", "--processes", str(work / "processes.csv"),
                                 "--info", str(work / "locate.json"), "--logs-dir", str(work / "copied"),
                                 "--output", str(work / "metrics.json"), "--per-process", str(work / "per_process.csv")]) == 0
    assert summary_table.main(["--metrics", str(clean_metrics), str(work / "metrics.json"),
                               "--csv", str(work / "summary.csv"), "--markdown", str(work / "summary.md")]) == 0

    processes = pd.read_csv(work / "processes.csv", keep_default_na=False)
    errors = dict(zip(processes["log"], processes["error"]))
    assert "cannot be read by this user (Permission denied)" in errors[RANK1]
    assert "chmod a+r" in errors[RANK1]
    assert "directory cannot be listed (Permission denied)" in errors["private"]
    assert errors[RANK0] == ""
    flags = pd.read_csv(work / "summary.csv", keep_default_na=False).loc[1, "flags"]
    assert f"log {RANK1} left out: cannot be read by this user" in flags
    assert "log private left out: directory cannot be listed" in flags


def test_full_file_system_named(tmp_path, caplog):
    copy(DCP, tmp_path / "logs", RANK0)

    status = locate_logs.main(["--mode", "dcp", "--logs", str(tmp_path / "logs"), "--output-dir", str(tmp_path / "copied"),
                               "--processes", "/dev/full", "--info", str(tmp_path / "locate.json")])

    assert status == 1
    assert "cannot write /dev/full: No space left on device" in caplog.text
    assert "Free space" in caplog.text


def test_manifest_not_json_named(tmp_path, caplog):
    copy(DCP, tmp_path / "logs", RANK0)
    manifest = tmp_path / "manifest.json"
    manifest.write_text('{"processes": [')

    status = locate_logs.main(["--mode", "dcp", "--logs", str(tmp_path / "logs"), "--manifest", str(manifest),
                               "--output-dir", str(tmp_path / "copied"), "--processes", str(tmp_path / "p.csv"),
                               "--info", str(tmp_path / "locate.json")])

    assert status == 1
    assert f"the manifest {manifest} is not valid JSON" in caplog.text
    assert "existing_logs.dcp.manifest" in caplog.text


def test_workflow_flags_damaged_logs_and_shares_redacted(tmp_path):
    """One damaged directory through Snakemake: the table is built, flagged, summarised and redacted."""
    damaged = tmp_path / "dcp-logs"
    copy(DCP, damaged)
    (damaged / RANK1).write_bytes((DCP / RANK1).read_bytes()[:5000])
    leftover_partial(damaged)
    text_and_readme(damaged)
    config = {
        "modes": ["torch_save", "dcp"],
        "existing_logs": {"torch_save": {"logs": str(TORCH_SAVE)}, "dcp": {"logs": str(damaged)}},
        "redact": {"enabled": True, "users": ["0"], "paths": [str(tmp_path)]},
    }

    result = run_snakemake(tmp_path, "--cores", "2", "results/summary.csv", "results/shared", config=config)

    assert result.returncode == 0, result.stdout[-5000:]
    assert "Traceback" not in result.stdout
    summary = pd.read_csv(tmp_path / "results" / "summary.csv", keep_default_na=False)
    assert list(summary["mode"]) == ["torch_save", "dcp"]
    assert summary.loc[0, "flags"] == ""
    flags = summary.loc[1, "flags"]
    assert f"log {RANK1} left out: truncated" in flags
    assert "darshan_partial left out: unfinished log" in flags
    assert "log notes.darshan left out: not a Darshan log" in flags
    assert int(summary.loc[1, "bytes_written_checkpoint"]) == RANK0_BYTES
    processes = pd.read_csv(tmp_path / "results" / "dcp" / "darshan" / "processes.csv", keep_default_na=False)
    assert len(processes) == 5
    assert "README.txt" not in set(processes["log"])
    summaries = tmp_path / "results" / "dcp" / "darshan" / "summaries"
    assert sorted(path.name for path in summaries.glob("*.html")) == [RANK0.replace(".darshan", ".html")]
    shared = tmp_path / "results" / "shared"
    assert (shared / "dcp" / "darshan" / "logs" / RANK0.replace("0_", "user_", 1)).is_file()
    assert str(tmp_path) not in (shared / "dcp" / "darshan" / "processes.csv").read_text()
    assert "<path>/dcp-logs/user_python3_id4701-4701_" in (shared / "dcp" / "darshan" / "processes.csv").read_text()
    assert (tmp_path / "results" / "dcp" / "darshan" / "logs" / RANK0).is_file()
