"""Figures from the real logs in tests/data: the plotted numbers match the table and the per-rank view."""

from __future__ import annotations

import json

import pandas as pd
import pytest

import plots
import rank_view
import summary_table
from test_rank_view import metrics_for, plain_view, rank_records_around, view_for

# Modes of the comparison, each from one job of tests/data.
JOBS = {"torch_save": "torch_save", "dcp": "dcp", "dcp_async": "dcp_async_process"}
PNG_MAGIC = b"\x89PNG"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Write the table and each mode's view as the workflow would, then draw every figure."""
    root = tmp_path_factory.mktemp("plots")
    metrics = []
    for mode, job in JOBS.items():
        metrics.append({**metrics_for(job), "mode": mode})
        # The asynchronous mode gets save timings, so that its hidden share is known.
        view = view_for(job, rank_records_around(job, True, 0.05)) if mode == "dcp_async" else plain_view(job)
        rank_view.write_view(rank_view.RankView(view.per_rank, view.intervals, view.phases, view.per_checkpoint,
                                                view.write_sizes, {**view.summary, "mode": mode}), root / mode / "ranks")
    summary_table.build_table(metrics).to_csv(root / "summary.csv", index=False)

    plots_dir = root / "plots"
    assert plots.main(["modes", "--summary", str(root / "summary.csv"),
                       "--rank-views", *[str(root / mode / "ranks" / "rank_view.json") for mode in JOBS],
                       "--output-dir", str(plots_dir), "--values", str(plots_dir / "modes_values.csv")]) == 0
    for mode in JOBS:
        assert plots.main(["ranks", "--mode", mode, "--rank-dir", str(root / mode / "ranks"),
                           "--output-dir", str(plots_dir), "--values", str(plots_dir / f"{mode}_values.csv")]) == 0
    return root


def plotted(workspace, name: str, figure: str) -> pd.DataFrame:
    values = pd.read_csv(workspace / "plots" / f"{name}_values.csv", keep_default_na=False)
    return values[values["figure"] == figure]


def value(values: pd.DataFrame, mode: str, series: str, category: str = "") -> float:
    row = values[(values["mode"] == mode) & (values["series"] == series) & (values["category"] == category)]
    assert len(row) == 1, f"{mode} {series} {category}"
    return float(row["value"].iloc[0])


def test_every_figure_written(workspace):
    names = [f"modes_{name}" for name in plots.MODE_FIGURES]
    names += [f"{mode}_{name}" for mode in JOBS for name in plots.RANK_FIGURES]

    for name in names:
        png = workspace / "plots" / f"{name}.png"
        svg = workspace / "plots" / f"{name}.svg"
        assert png.read_bytes()[:4] == PNG_MAGIC, name
        assert svg.read_text().lstrip().startswith("<?xml"), name


def test_bytes_bars_match_table(workspace):
    table = pd.read_csv(workspace / "summary.csv")
    values = plotted(workspace, "modes", "checkpoint_bytes")

    for row in table.itertuples():
        assert value(values, row.mode, "bytes written", "total") == row.bytes_written_checkpoint, row.mode
        for rank, written in enumerate(row.checkpoint_bytes_by_rank.split(" / ")):
            assert value(values, row.mode, "bytes written", f"rank {rank}") == int(written), f"{row.mode} rank {rank}"


def test_bandwidth_bars_match_table(workspace):
    table = pd.read_csv(workspace / "summary.csv")
    values = plotted(workspace, "modes", "bandwidth")

    for row in table.itertuples():
        assert value(values, row.mode, "Darshan, slowest rank") == pytest.approx(row.bandwidth_by_slowest_mib_per_s), row.mode
        assert value(values, row.mode, "training loop, while blocked") == pytest.approx(
            row.blocking_throughput_mib_per_s), row.mode


def test_blocking_bars_match_table(workspace):
    table = pd.read_csv(workspace / "summary.csv")
    values = plotted(workspace, "modes", "blocking")

    for row in table.itertuples():
        assert value(values, row.mode, "blocked per checkpoint") == pytest.approx(row.blocking_mean_s), row.mode
        assert value(values, row.mode, "save complete after") == pytest.approx(row.completion_mean_s), row.mode


def test_file_bars_match_table(workspace):
    table = pd.read_csv(workspace / "summary.csv")
    values = plotted(workspace, "modes", "files")

    for row in table.itertuples():
        expected = row.files_opened_checkpoint / row.checkpoints
        assert value(values, row.mode, "files per checkpoint") == pytest.approx(expected), row.mode


def test_hidden_bars_match_views(workspace):
    values = plotted(workspace, "modes", "hidden")

    view = json.loads((workspace / "dcp_async" / "ranks" / "rank_view.json").read_text())
    assert value(values, "dcp_async", "write time hidden behind training") == pytest.approx(100 * view["hidden_share"])
    assert value(values, "dcp_async", "lowest over Darshan's clock offset") == pytest.approx(100 * view["hidden_share_min"])
    assert values[values["mode"] == "dcp"]["value"].eq("").all()


def test_rank_bars_match_metrics(workspace):
    for mode, job in JOBS.items():
        values = plotted(workspace, mode, "ranks")
        for row in metrics_for(job)["per_rank"]:
            category = f"rank {row['rank']}"
            assert value(values, mode, "checkpoint_bytes_written", category) == row["checkpoint_bytes_written"], category
            assert value(values, mode, "checkpoint_write_time_s", category) == pytest.approx(
                row["checkpoint_write_time_s"]), category


def test_write_size_bars_match_counters(workspace):
    for mode, job in JOBS.items():
        values = plotted(workspace, mode, "write_sizes")
        expected = plain_view(job).per_rank["checkpoint_posix_writes"].sum()
        assert values["value"].astype(float).sum() == expected, mode


def test_timeline_limits_ranks_keeping_rank_zero():
    view = plain_view("dcp_async_thread")

    rows = plots.timeline_rows(view.intervals, view.per_rank, max_ranks=1)

    assert {rank for rank, _, _ in rows} == {0}
    assert {rank for rank, _, _ in plots.timeline_rows(view.intervals, view.per_rank, max_ranks=16)} == {0, 1}
