"""The Snakemake report of a workflow run on the real logs in tests/data."""

from __future__ import annotations

import base64
import re

import pandas as pd
import pytest

from conftest import DATA
from test_workflow import run_snakemake

# One mode keeps the run short (test_workflow.py runs every mode through the same rules).
JOBS = {"torch_save": "torch_save"}
EMBEDDED = re.compile(r"data:(?P<mime>[\w/+.-]+);charset=utf8;filename=(?P<name>[^;]+);base64,(?P<data>[A-Za-z0-9+/=]+)")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Run the workflow on existing logs, then build the report; return the directory and the embedded files."""
    workdir = tmp_path_factory.mktemp("report")
    config = {"modes": list(JOBS), "summaries": {"html": "checkpoint"},
              "existing_logs": {mode: {"logs": str(DATA / job / "logs")} for mode, job in JOBS.items()}}
    run = run_snakemake(workdir, "--cores", "2", config=config)
    assert run.returncode == 0, run.stdout[-5000:]

    report = run_snakemake(workdir, "--report", "report.html", config=config)
    assert report.returncode == 0, report.stdout[-5000:]

    text = (workdir / "report.html").read_text()
    files = {match["name"]: base64.b64decode(match["data"]) for match in EMBEDDED.finditer(text)}
    return workdir, text, files


def test_report_file_built(built):
    workdir, text, _ = built

    assert (workdir / "report.html").stat().st_size > 0
    assert "Checkpoint I/O of PyTorch training on a parallel file system" in text


def test_report_contains_table(built):
    workdir, _, files = built

    assert files["summary.csv"] == (workdir / "results" / "summary.csv").read_bytes()
    page = files["insights.html"].decode()
    assert "Checkpoint I/O by mode" in page
    assert "bytes written (checkpoint)" in page
    for mode in JOBS:
        assert f"<th>{mode}</th>" in page, mode


def test_report_contains_plots_and_insights(built):
    _, _, files = built

    for name in ("modes_checkpoint_bytes", "modes_bandwidth", "modes_blocking", "modes_files", "modes_hidden",
                 "torch_save_timeline", "torch_save_ranks", "torch_save_write_sizes"):
        assert files[f"{name}.png"][:4] == b"\x89PNG", name
    assert "Rank 0 wrote 100% of the checkpoint bytes" in files["insights.html"].decode()


def test_report_links_log_summaries(built):
    workdir, _, files = built
    summaries = {path.name for path in (workdir / "results").glob("*/darshan/summaries/*.html")}

    assert len(summaries) == 1
    for name in summaries:
        assert name in files, name
        assert files[name] == next((workdir / "results").glob(f"*/darshan/summaries/{name}")).read_bytes()


def test_workflow_plots_match_table(built):
    workdir, _, _ = built
    table = pd.read_csv(workdir / "results" / "summary.csv").set_index("mode")
    values = pd.read_csv(workdir / "results" / "plots" / "modes_values.csv", keep_default_na=False)
    totals = values[(values["figure"] == "checkpoint_bytes") & (values["category"] == "total")].set_index("mode")
    bandwidth = values[values["series"] == "Darshan, slowest rank"].set_index("mode")

    for mode in JOBS:
        assert float(totals.loc[mode, "value"]) == table.loc[mode, "bytes_written_checkpoint"], mode
        assert float(bandwidth.loc[mode, "value"]) == pytest.approx(table.loc[mode, "bandwidth_by_slowest_mib_per_s"]), mode
