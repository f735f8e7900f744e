"""Redacted copies of the results, made from the real dcp logs in tests/data and their tables."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pandas as pd
import pytest

import darshan_metrics
import locate_logs
import redact
import summary_table
from conftest import DATA

DCP = DATA / "dcp" / "logs"
CHECKPOINT_ROOT = "/tmp/ckpt-data"


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """A results directory as the workflow leaves it for the dcp logs: copied logs, tables, metrics, summary."""
    results = tmp_path_factory.mktemp("run") / "results"
    darshan = results / "dcp" / "darshan"
    metrics = results / "dcp" / "metrics"
    assert locate_logs.main(["--mode", "dcp", "--logs", str(DCP), "--output-dir", str(darshan / "logs"),
                             "--processes", str(darshan / "processes.csv"), "--info", str(darshan / "locate.json")]) == 0
    assert darshan_metrics.main(["--mode", "dcp", "--processes", str(darshan / "processes.csv"),
                                 "--info", str(darshan / "locate.json"), "--logs-dir", str(darshan / "logs"),
                                 "--output", str(metrics / "metrics.json"),
                                 "--per-process", str(metrics / "per_process.csv")]) == 0
    assert summary_table.main(["--metrics", str(metrics / "metrics.json"), "--csv", str(results / "summary.csv"),
                               "--markdown", str(results / "summary.md")]) == 0
    return results


def text_files(results: Path) -> list[Path]:
    return [results / "summary.csv", results / "summary.md", results / "dcp" / "darshan" / "processes.csv",
            results / "dcp" / "darshan" / "locate.json", results / "dcp" / "metrics" / "metrics.json",
            results / "dcp" / "metrics" / "per_process.csv"]


def digests(directory: Path) -> dict[str, str]:
    return {str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(directory.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def shared(results) -> Path:
    """Redacted copies of ``results`` with the uid of the logs and two configured paths."""
    redactor = redact.build_redactor(["0"], [str(DATA), CHECKPOINT_ROOT], environ={})
    before = digests(results)
    output = results.parent / "shared"

    redact.redact_results(redactor, results, output, text_files(results), [results / "dcp" / "darshan" / "logs"])

    assert digests(results) == before, "redaction changed an original"
    return output


def test_log_copies_renamed_not_rewritten(shared, results):
    originals = sorted((results / "dcp" / "darshan" / "logs").iterdir())
    copies = sorted((shared / "dcp" / "darshan" / "logs").iterdir())

    assert [path.name for path in copies] == [path.name.replace("0_", "user_", 1) for path in originals]
    for original, copy in zip(originals, copies):
        assert copy.read_bytes() == original.read_bytes()


def test_tables_lose_paths_and_user(shared):
    processes = pd.read_csv(shared / "dcp" / "darshan" / "processes.csv")
    copies = {path.name for path in (shared / "dcp" / "darshan" / "logs").iterdir()}

    assert set(processes["log"]) == copies
    assert all(source.startswith("<path>/dcp/logs/user_python3_id") for source in processes["source"])
    assert str(DATA) not in (shared / "dcp" / "darshan" / "locate.json").read_text()
    assert json.loads((shared / "dcp" / "darshan" / "locate.json").read_text())["searched"] == ["<path>/dcp/logs"]


def test_numbers_kept(shared, results):
    original = pd.read_csv(results / "dcp" / "darshan" / "processes.csv")
    redacted = pd.read_csv(shared / "dcp" / "darshan" / "processes.csv")

    assert list(redacted["rank"].dropna().astype(int)) == list(original["rank"].dropna().astype(int))
    assert list(redacted["checkpoint_bytes_written"]) == list(original["checkpoint_bytes_written"])
    assert (shared / "summary.csv").read_text().count(",") == (results / "summary.csv").read_text().count(",")


def test_metrics_checkpoint_dir_replaced(shared):
    metrics = json.loads((shared / "dcp" / "metrics" / "metrics.json").read_text())

    assert metrics["checkpoint_dir"] == "<path>/final/dcp"
    assert CHECKPOINT_ROOT not in (shared / "dcp" / "metrics" / "metrics.json").read_text()
    assert metrics["checkpoint"]["bytes_written"] > 0


def test_environment_paths_and_user():
    environ = {"HOME": "/home/alice", "PSCRATCH": "/pscratch/sd/a/alice", "USER": "alice"}
    redactor = redact.build_redactor([], [], environ)

    assert redactor.text("/home/alice/ckpt") == "$HOME/ckpt"
    assert redactor.text("/pscratch/sd/a/alice/run/step_0") == "$PSCRATCH/run/step_0"
    assert redactor.text("alice_python3_id12-12_1-2-3-4_1.darshan") == "user_python3_id12-12_1-2-3-4_1.darshan"
    assert redactor.text("/global/homes/a/alice/data") == "/global/homes/a/user/data"
    assert redactor.text("malice checkpoint_alice") == "malice checkpoint_alice"


def test_longer_name_left_and_reported():
    redactor = redact.build_redactor([], [], {"HOME": "/home/alice", "USER": "alice"})

    text = redactor.text("/home/alice2/ckpt")

    assert text == "/home/alice2/ckpt"
    assert redactor.leftovers(text) == ["/home/alice", "alice"]


def test_numeric_user_only_in_log_names():
    redactor = redact.build_redactor(["0"], [], {})

    assert redactor.text("rank 0 wrote /ckpt/step_0/__0_0.distcp") == "rank 0 wrote /ckpt/step_0/__0_0.distcp"
    assert redactor.text("/logs/0_python3_id5-5_12-4-1-2_1.darshan") == "/logs/user_python3_id5-5_12-4-1-2_1.darshan"


def test_configured_path_expanded():
    redactor = redact.build_redactor([], ["$CFS/m1234/alice", "~/private"], {"CFS": "/global/cfs/cdirs", "HOME": "/u/a"})

    assert redactor.text("/global/cfs/cdirs/m1234/alice/x") == "<path>/x"
    assert redactor.text("/u/a/private/y") == "<path>/y"


@pytest.mark.parametrize("path, message", [
    ("$NOT_SET_ANYWHERE/x", "names an environment variable that is not set"),
    ("relative/dir", "is not an absolute path"),
    ("/", "is not an absolute path below /"),
])
def test_unusable_configured_path_rejected(path, message):
    with pytest.raises(redact.RedactionError) as error:
        redact.build_redactor([], [path], {})

    assert message in str(error.value)
    assert repr(path) in str(error.value)


def test_non_empty_output_rejected(results, tmp_path):
    output = tmp_path / "shared"
    output.mkdir()
    (output / "notes.txt").write_text("keep me")

    with pytest.raises(redact.RedactionError) as error:
        redact.redact_results(redact.Redactor(), results, output, text_files(results), [])

    assert "exists and is not empty" in str(error.value)
    assert (output / "notes.txt").read_text() == "keep me"
    assert sorted(path.name for path in output.iterdir()) == ["notes.txt"]


def test_cli_writes_copies(results, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="redact")
    output = tmp_path / "shared"
    logs = results / "dcp" / "darshan" / "logs"

    status = redact.main(["--results-dir", str(results), "--output-dir", str(output),
                          "--text", *map(str, text_files(results)), "--logs-dir", str(logs),
                          "--user", "0", "--path", str(DATA)])

    assert status == 0
    assert len(list((output / "dcp" / "darshan" / "logs").glob("user_python3_id*.darshan"))) == 3
    assert "wrote 6 text files and 3 logs" in caplog.text


def test_cli_file_outside_results_rejected(results, tmp_path, caplog):
    status = redact.main(["--results-dir", str(results), "--output-dir", str(tmp_path / "shared"),
                          "--text", str(DATA / "README.md")])

    assert status == 1
    assert "is not under the results directory" in caplog.text
