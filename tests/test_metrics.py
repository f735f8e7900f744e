"""Metrics and the comparison table, computed with PyDarshan from the real logs in tests/data."""

from __future__ import annotations

import json

import pandas as pd
import pytest

import darshan_logs
import darshan_metrics
import locate_logs
import summary_table
from conftest import DATA, JOBS, bytes_on_disk_by_rank, checkpoint_files, manifest_for


def metrics_for(job: str, tmp_path, manifest: dict | None = None) -> tuple[dict, pd.DataFrame]:
    found, info = locate_logs.locate(job, None, DATA / job / "logs", None, [], 0)
    processes = locate_logs.process_table(found, info["checkpoint_dir"])
    processes["error"] = processes["error"].fillna("")
    return darshan_metrics.compute(job, processes, DATA / job / "logs", info, manifest)


@pytest.mark.parametrize("job", sorted(JOBS))
def test_checkpoint_bytes_match_disk_per_rank(job, tmp_path):
    metrics, _ = metrics_for(job, tmp_path)

    written = {row["rank"]: row["checkpoint_bytes_written"] for row in metrics["per_rank"]}
    on_disk = bytes_on_disk_by_rank(job)
    for rank in written:
        assert written[rank] == on_disk.get(rank, 0), f"rank {rank}"
    assert metrics["checkpoint"]["bytes_written"] == sum(size for size, _ in checkpoint_files(job))


@pytest.mark.parametrize("job", sorted(JOBS))
def test_checkpoint_count_and_ranks(job, tmp_path):
    metrics, _ = metrics_for(job, tmp_path)

    assert metrics["checkpoints_written"] == 3
    assert metrics["ranks"] == 2
    assert metrics["flags"] == []


def test_torch_save_counts_files_not_opens(tmp_path):
    metrics, _ = metrics_for("torch_save", tmp_path)

    assert metrics["checkpoint"]["files_opened"] == 3
    assert metrics["checkpoint"]["opens"] > 3 * 100
    assert metrics["rank_imbalance_bytes"] == pytest.approx(2.0)


def test_dcp_files_fsyncs_and_balance(tmp_path):
    metrics, _ = metrics_for("dcp", tmp_path)

    # Two shards and the .metadata.tmp that is renamed to .metadata, per checkpoint.
    assert metrics["checkpoint"]["files_opened"] == 9
    assert metrics["checkpoint"]["fsyncs"] == 9
    assert metrics["rank_imbalance_bytes"] == pytest.approx(1.0, abs=0.01)


def test_import_noise_kept_separate(tmp_path):
    metrics, _ = metrics_for("dcp", tmp_path)

    assert metrics["all"]["files_opened"] > 2000
    assert metrics["all"]["bytes_read"] > metrics["checkpoint"]["bytes_read"]


def test_slowest_rank_figures_from_pydarshan(tmp_path):
    metrics, _ = metrics_for("dcp_async_process", tmp_path)
    checkpoint = metrics["checkpoint"]

    assert checkpoint["slowest_rank"] in (0, 1)
    assert checkpoint["slowest_rank_io_time_s"] > 0
    expected = checkpoint["bytes_written"] / 1024**2 / checkpoint["slowest_rank_io_time_s"]
    assert checkpoint["bandwidth_by_slowest_mib_per_s"] == pytest.approx(expected, rel=1e-6)


def test_write_bandwidth_by_slowest_rank(tmp_path):
    metrics, _ = metrics_for("dcp", tmp_path)
    checkpoint = metrics["checkpoint"]
    slowest_s = max(rank["checkpoint_write_time_s"] for rank in metrics["per_rank"])

    assert slowest_s > 0
    expected = checkpoint["bytes_written"] / 1024**2 / slowest_s
    assert checkpoint["write_bandwidth_by_slowest_mib_per_s"] == pytest.approx(expected, rel=1e-9)


def test_writer_bytes_count_for_its_rank(tmp_path):
    metrics, per_process = metrics_for("dcp_async_process", tmp_path)

    writers = per_process[per_process["role"] == "checkpoint_writer"]
    ranks = per_process[per_process["role"] == "rank"]
    assert writers["checkpoint_bytes_written"].sum() == metrics["checkpoint"]["bytes_written"]
    assert ranks["checkpoint_bytes_written"].sum() == 0


def test_common_access_sizes_are_pairs(tmp_path):
    metrics, _ = metrics_for("torch_save", tmp_path)

    sizes = metrics["checkpoint"]["common_access_sizes"]
    assert 0 < len(sizes) <= 4
    assert all(count > 0 for _, count in sizes)
    assert [count for _, count in sizes] == sorted((count for _, count in sizes), reverse=True)


def test_application_figures_from_manifest(tmp_path):
    manifest = manifest_for("dcp", tmp_path)

    figures = darshan_metrics.application_figures(manifest)

    assert figures["checkpoints"] == 3
    assert figures["checkpoint_bytes_on_disk"] == sum(size for size, _ in checkpoint_files("dcp"))
    assert figures["blocking_throughput_mib_per_s"] == pytest.approx(figures["checkpoint_size_bytes"] / 1024**2 / 0.1)
    assert figures["bytes_on_disk_by_rank"] == {str(k): v for k, v in bytes_on_disk_by_rank("dcp").items()}


def test_untraced_mode_marked(tmp_path):
    info = {"traced": False, "checkpoint_dir": "/x", "source": "run"}

    metrics, _ = darshan_metrics.compute("dcp", pd.DataFrame(), tmp_path, info, manifest_for("dcp", tmp_path))
    row = summary_table.table_row(metrics)

    assert row["bytes_written_checkpoint"] == summary_table.NOT_TRACED
    assert row["blocking_mean_s"] == pytest.approx(0.1)


def test_partial_module_flagged(tmp_path):
    job = "partial_default_limit"
    found, info = locate_logs.locate(job, None, DATA / job / "logs", "/tmp/partial-ckpt", [], 0)
    processes = locate_logs.process_table(found, info["checkpoint_dir"])
    processes["error"] = processes["error"].fillna("")

    metrics, per_process = darshan_metrics.compute(job, processes, DATA / job / "logs", info, None)

    assert per_process.loc[0, "partial_modules"] == "POSIX"
    assert any("partial POSIX" in flag and "MAX_RECORDS" in flag for flag in metrics["flags"])
    assert any("no checkpoint I/O recorded" in flag for flag in metrics["flags"])


def test_table_answers_the_questions(tmp_path):
    metrics = [metrics_for(job, tmp_path)[0] for job in ("torch_save", "dcp", "dcp_async_thread")]

    table = summary_table.build_table(metrics)
    markdown = summary_table.to_markdown(table)

    assert list(table["mode"]) == ["torch_save", "dcp", "dcp_async_thread"]
    assert list(table["files_opened_checkpoint"]) == [3, 9, 9]
    assert table.loc[0, "bytes_written_checkpoint"] == sum(size for size, _ in checkpoint_files("torch_save"))
    assert (table["bandwidth_by_slowest_mib_per_s"] > 0).all()
    for header in ("files opened (checkpoint)", "bytes written (checkpoint)", "Darshan bandwidth by slowest rank (MiB/s)"):
        assert header in markdown


def test_metrics_cli_writes_json(tmp_path):
    found, info = locate_logs.locate("dcp", None, DATA / "dcp" / "logs", None, [], 0)
    locate_logs.process_table(found, info["checkpoint_dir"]).to_csv(tmp_path / "processes.csv", index=False)
    (tmp_path / "info.json").write_text(json.dumps(info))

    status = darshan_metrics.main([
        "--mode", "dcp", "--processes", str(tmp_path / "processes.csv"), "--info", str(tmp_path / "info.json"),
        "--logs-dir", str(DATA / "dcp" / "logs"), "--output", str(tmp_path / "metrics.json"),
        "--per-process", str(tmp_path / "per_process.csv"),
    ])

    assert status == 0
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["checkpoint"]["bytes_written"] == sum(size for size, _ in checkpoint_files("dcp"))
    assert len(pd.read_csv(tmp_path / "per_process.csv")) == 3
