"""Each insight on a real log of tests/data that triggers it and one that does not."""

from __future__ import annotations

import json

import pandas as pd
import pytest

import insights
import rank_view
import summary_table
from test_rank_view import metrics_for, plain_view

LIMITS = insights.Thresholds()


def evidence(job: str) -> insights.ModeEvidence:
    """Return what the checks read for one job of tests/data."""
    view = plain_view(job)
    return insights.ModeEvidence(mode=job, metrics=metrics_for(job), view=view.summary,
                                 per_rank=view.per_rank, per_checkpoint=view.per_checkpoint)


def test_single_writer_on_torch_save():
    insight = insights.check_single_writer(evidence("torch_save"), LIMITS)

    assert insight is not None
    assert insight.level == "high"
    assert insight.values["rank"] == 0
    assert insight.figure == "plots/torch_save_ranks.png"
    assert "torch.distributed.checkpoint" in insight.suggestion


def test_single_writer_not_on_dcp():
    assert insights.check_single_writer(evidence("dcp"), LIMITS) is None


def test_rank_imbalance_on_dcp_time():
    insight = insights.check_rank_imbalance(evidence("dcp"), LIMITS)

    assert insight is not None
    assert insight.values["time_imbalance"] > LIMITS.imbalance_stragglers
    assert insight.values["bytes_imbalance"] < LIMITS.imbalance_size
    assert insight.values["slowest_rank"] == 0


def test_rank_imbalance_not_on_balanced_ranks():
    assert insights.check_rank_imbalance(evidence("dcp_async_thread"), LIMITS) is None


def test_rank_imbalance_not_on_single_writer():
    assert insights.check_rank_imbalance(evidence("torch_save"), LIMITS) is None


def test_small_writes_on_dcp():
    insight = insights.check_small_writes(evidence("dcp"), LIMITS)

    assert insight is not None
    assert insight.values["small_write_share"] == pytest.approx(metrics_for("dcp")["checkpoint"]["small_write_share"])
    assert insight.values["small_writes"] > LIMITS.small_requests_absolute
    assert insight.figure == "plots/dcp_write_sizes.png"


def test_small_writes_not_below_absolute_count():
    share = metrics_for("torch_save")["checkpoint"]["small_write_share"]

    insight = insights.check_small_writes(evidence("torch_save"), LIMITS)

    assert share > LIMITS.small_requests
    assert insight is None


def test_fsync_share_on_dcp_dxt():
    insight = insights.check_fsync_share(evidence("dcp_dxt"), LIMITS)

    assert insight is not None
    assert insight.values["fsync_share"] >= LIMITS.fsync_share
    assert "DXT_POSIX" in insight.values["estimated_from"]


def test_fsync_share_not_without_fsync():
    assert insights.check_fsync_share(evidence("torch_save"), LIMITS) is None


def test_many_files_on_dcp():
    insight = insights.check_many_files(evidence("dcp"), LIMITS)

    assert insight is not None
    assert insight.values["files_per_checkpoint"] == 3
    assert insight.values["writing_ranks"] == 2


def test_many_files_not_on_single_file():
    assert insights.check_many_files(evidence("torch_save"), LIMITS) is None


def test_metadata_heavy_on_torch_save_reopens():
    insight = insights.check_metadata_heavy(evidence("torch_save"), LIMITS)

    assert insight is not None
    assert insight.values["metadata_heavy"] == 3
    assert insight.values["max_metadata_ops_per_file"] > LIMITS.metadata_ops_per_file
    assert "torch.save(obj, stream)" in insight.suggestion


def test_metadata_heavy_not_on_dcp():
    assert insights.check_metadata_heavy(evidence("dcp"), LIMITS) is None


def test_log_problems_on_partial_log():
    insight = insights.check_log_problems(evidence("partial_default_limit"), LIMITS, max_records=50000)

    assert insight is not None
    assert insight.values["problems"] == ["partial"]
    assert "MAX_RECORDS" in insight.suggestion
    assert "darshan.max_records" in insight.suggestion
    assert "50,000" in insight.suggestion


def test_log_problems_not_on_complete_job():
    assert insights.check_log_problems(evidence("dcp"), LIMITS) is None


def test_evaluate_orders_by_level_and_skips_untraced():
    untraced = insights.ModeEvidence(mode="dcp_async", metrics={"mode": "dcp_async", "traced": False}, view={},
                                     per_rank=pd.DataFrame(), per_checkpoint=pd.DataFrame())

    found = insights.evaluate([evidence("torch_save"), evidence("dcp"), untraced], LIMITS)

    levels = [insight.level for insight in found]
    assert levels == sorted(levels, key=insights.LEVELS.index)
    assert {insight.mode for insight in found} == {"torch_save", "dcp"}
    assert ("torch_save", "single_writer") in {(insight.mode, insight.check) for insight in found}


def test_cli_writes_markdown_json_html(tmp_path):
    arguments = []
    metrics = []
    for job in ("torch_save", "dcp"):
        view = plain_view(job)
        rank_view.write_view(view, tmp_path / job / "ranks")
        (tmp_path / job / "metrics.json").write_text(json.dumps(metrics_for(job), default=str))
        arguments += [str(tmp_path / job / "metrics.json")]
        metrics.append(metrics_for(job))
    summary_table.build_table(metrics).to_csv(tmp_path / "summary.csv", index=False)
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "torch_save_ranks.png").write_bytes(b"\x89PNG figure")

    status = insights.main(["--metrics", *arguments,
                            "--rank-views", *[str(tmp_path / job / "ranks" / "rank_view.json") for job in ("torch_save", "dcp")],
                            "--summary", str(tmp_path / "summary.csv"), "--max-records", "50000",
                            "--markdown", str(tmp_path / "insights.md"), "--json", str(tmp_path / "insights.json"),
                            "--html", str(tmp_path / "insights.html")])

    assert status == 0
    written = json.loads((tmp_path / "insights.json").read_text())
    assert written["thresholds"]["small_requests_absolute"] == 1000
    assert ("torch_save", "single_writer") in {(i["mode"], i["check"]) for i in written["insights"]}
    assert "Rank 0 wrote 100% of the checkpoint bytes" in (tmp_path / "insights.md").read_text()
    page = (tmp_path / "insights.html").read_text()
    assert "bytes written (checkpoint)" in page
    assert "data:image/png;base64," in page
