"""Find checkpoint I/O problems in each mode's figures and suggest a change for each.

Each check reads the figures the workflow already computed: metrics.json from
darshan_metrics.py and the per-rank view from rank_view.py. It compares one
number with a threshold, and when the number crosses it the check returns an
insight with what was found, the numbers, the figure that shows it and the
change to try. The thresholds start from Drishti's (hpc-io/drishti-io,
drishti/includes/config.py) where Drishti has one, and the Thresholds class
lists each with its source.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import logging
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from darshan_metrics import MIB
from summary_table import HEADERS

log = logging.getLogger("insights")

LEVELS = ("high", "warn", "info")


@dataclass(frozen=True)
class Thresholds:
    """Limits above which a check reports an insight."""

    # All checkpoint bytes from one rank: that rank's share of the bytes, with at least two ranks.
    single_writer_share: float = 0.99
    # Drishti imbalance_size: (max - min) / max of the bytes of the ranks that write.
    imbalance_size: float = 0.3
    # Drishti imbalance_stragglers: (max - min) / max of the checkpoint I/O time of the ranks that write.
    imbalance_stragglers: float = 0.15
    # Ours: a time imbalance smaller than this many seconds is timer noise, not a straggler.
    imbalance_min_gap_s: float = 0.01
    # Drishti small_bytes, small_requests and small_requests_absolute: more than 10 % and more
    # than 1,000 of the checkpoint writes are at most 1 MiB.
    small_bytes: int = MIB
    small_requests: float = 0.1
    small_requests_absolute: int = 1000
    # Ours (Drishti has no fsync check): fsync takes at least half of the checkpoint write time.
    fsync_share: float = 0.5
    # Ours: a checkpoint has more files than ranks that write it.
    files_per_writing_rank: float = 1.0
    # Drishti metadata_time_rank: a rank spends more than 30 s in metadata calls on checkpoint files.
    metadata_time_rank_s: float = 30.0
    # Ours: metadata calls take more than 30 % of a checkpoint's I/O time and at least 0.1 s,
    # or there are more than 10 opens, stats and renames per checkpoint file.
    metadata_share: float = 0.3
    metadata_min_s: float = 0.1
    metadata_ops_per_file: float = 10.0


@dataclass
class ModeEvidence:
    """Figures and tables of one mode, as the checks read them."""

    mode: str
    metrics: dict
    view: dict
    per_rank: pd.DataFrame
    per_checkpoint: pd.DataFrame

    @classmethod
    def load(cls, metrics_path: Path, rank_dir: Path) -> "ModeEvidence":
        """Read a mode's metrics.json and the files rank_view.py wrote."""
        metrics = json.loads(metrics_path.read_text())
        return cls(mode=metrics["mode"], metrics=metrics,
                   view=json.loads((rank_dir / "rank_view.json").read_text()),
                   per_rank=_read_csv(rank_dir / "per_rank.csv"),
                   per_checkpoint=_read_csv(rank_dir / "per_checkpoint.csv"))

    def writing_ranks(self) -> pd.DataFrame:
        """Return the per-rank rows of the ranks that wrote checkpoint data."""
        if self.per_rank.empty:
            return self.per_rank
        return self.per_rank[self.per_rank["checkpoint_bytes_written"] > 0]


@dataclass
class Insight:
    """One finding: what crossed which threshold, the figure that shows it and the change to try."""

    check: str
    mode: str
    level: str
    title: str
    details: list[str]
    suggestion: str
    figure: str | None
    values: dict = field(default_factory=dict)
    threshold: dict = field(default_factory=dict)


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def _percent(share: float) -> str:
    return f"{100 * share:.0f}%"


# ---- checks ---------------------------------------------------------------------------

def check_single_writer(evidence: ModeEvidence, limits: Thresholds) -> Insight | None:
    """Report a mode whose checkpoint bytes all come from one rank."""
    ranks = evidence.per_rank
    if len(ranks) < 2 or ranks["checkpoint_bytes_written"].sum() == 0:
        return None
    top = ranks.loc[ranks["checkpoint_bytes_share"].idxmax()]
    if top["checkpoint_bytes_share"] < limits.single_writer_share:
        return None
    rank = int(top["rank"])
    return Insight(
        check="single_writer", mode=evidence.mode, level="high",
        title=f"Rank {rank} wrote {_percent(top['checkpoint_bytes_share'])} of the checkpoint bytes "
              f"while {'the other rank' if len(ranks) == 2 else f'the other {len(ranks) - 1} ranks'} waited",
        details=[f"rank {rank}: {top['checkpoint_bytes_written'] / MIB:.1f} MiB in {top['checkpoint_io_time_s']:.3f} s "
                 f"of checkpoint I/O; the other ranks wrote {_percent(1 - top['checkpoint_bytes_share'])} of the bytes "
                 "and waited for it",
                 "the save takes as long as one process needs to write the whole state, whatever the number of ranks"],
        suggestion="Shard the save: torch.distributed.checkpoint.save (DCP) writes one file per rank and spreads "
                   "replicated (DDP) tensors over the ranks, and an FSDP-sharded model gives each rank its own shard "
                   "to write. Then the bandwidth of all ranks' nodes adds up.",
        figure=f"plots/{evidence.mode}_ranks.png",
        values={"rank": rank, "bytes_share": float(top["checkpoint_bytes_share"]), "ranks": len(ranks)},
        threshold={"single_writer_share": limits.single_writer_share},
    )


def check_rank_imbalance(evidence: ModeEvidence, limits: Thresholds) -> Insight | None:
    """Report uneven bytes or I/O time among the ranks that write (Drishti imbalance_size, imbalance_stragglers)."""
    writers = evidence.writing_ranks()
    if len(writers) < 2:
        return None
    max_bytes, min_bytes = writers["checkpoint_bytes_written"].max(), writers["checkpoint_bytes_written"].min()
    bytes_imbalance = (max_bytes - min_bytes) / max_bytes
    slowest, fastest = writers["checkpoint_io_time_s"].max(), writers["checkpoint_io_time_s"].min()
    time_imbalance = (slowest - fastest) / slowest if slowest > 0 else 0.0

    uneven_bytes = bytes_imbalance > limits.imbalance_size
    straggler = time_imbalance > limits.imbalance_stragglers and slowest - fastest >= limits.imbalance_min_gap_s
    if not (uneven_bytes or straggler):
        return None

    slow_rank = int(writers.loc[writers["checkpoint_io_time_s"].idxmax(), "rank"])
    details = [f"bytes: (max - min) / max = {_percent(bytes_imbalance)} over {len(writers)} writing ranks",
               f"checkpoint I/O time: (max - min) / max = {_percent(time_imbalance)}; rank {slow_rank} is the slowest "
               f"with {slowest:.3f} s against {fastest:.3f} s"]
    return Insight(
        check="rank_imbalance", mode=evidence.mode, level="warn",
        title=(f"Checkpoint bytes differ by {_percent(bytes_imbalance)} between ranks" if uneven_bytes
               else f"Checkpoint I/O time differs by {_percent(time_imbalance)} between ranks"),
        details=details,
        suggestion="Every rank waits for the slowest one at the end of a save. Uneven bytes come from the sharding "
                   "(uneven parameter shards, or rank 0 writing extra files); balance the shards. Uneven time with "
                   "even bytes points at the file system: on Lustre give each rank's file its own OSTs "
                   "(lfs setstripe on the checkpoint directory) and look for other jobs on the same OSTs.",
        figure=f"plots/{evidence.mode}_ranks.png",
        values={"bytes_imbalance": float(bytes_imbalance), "time_imbalance": float(time_imbalance),
                "slowest_rank": slow_rank},
        threshold={"imbalance_size": limits.imbalance_size, "imbalance_stragglers": limits.imbalance_stragglers,
                   "imbalance_min_gap_s": limits.imbalance_min_gap_s},
    )


def check_small_writes(evidence: ModeEvidence, limits: Thresholds) -> Insight | None:
    """Report many small checkpoint writes (Drishti small_requests, small_requests_absolute)."""
    share = (evidence.metrics.get("checkpoint") or {}).get("small_write_share")
    ranks = evidence.per_rank
    small = int(ranks["checkpoint_small_writes"].sum()) if len(ranks) else 0
    if share is None or share <= limits.small_requests or small <= limits.small_requests_absolute:
        return None
    sizes = (evidence.metrics.get("checkpoint") or {}).get("common_access_sizes") or []
    common = ", ".join(f"{size:,} B ({count:,} times)" for size, count in sizes[:3])
    return Insight(
        check="small_writes", mode=evidence.mode, level="high",
        title=f"{small:,} checkpoint writes ({_percent(share)}) are at most 1 MiB",
        details=[f"most common access sizes (reads and writes, POSIX_ACCESS1-4): {common}" if common else "no common access sizes recorded",
                 "each small write is one system call, and on a parallel file system often one network request"],
        suggestion="Write in large blocks: serialise into memory and write the buffer at once (torch.save into an "
                   "io.BytesIO, then one write of its contents). DCP's default format calls torch.save per tensor, so "
                   "small tensors (biases, norms, their optimizer states) become small writes; "
                   "FileSystemWriter(serialization_format=SerializationFormat.SAFETENSORS) writes each rank's file "
                   "in one call (needs the safetensors package).",
        figure=f"plots/{evidence.mode}_write_sizes.png",
        values={"small_write_share": float(share), "small_writes": small},
        threshold={"small_bytes": limits.small_bytes, "small_requests": limits.small_requests,
                   "small_requests_absolute": limits.small_requests_absolute},
    )


def check_fsync_share(evidence: ModeEvidence, limits: Thresholds) -> Insight | None:
    """Report fsync taking most of the checkpoint write time."""
    share = evidence.view.get("fsync_share")
    if share is None or share < limits.fsync_share:
        return None
    source = evidence.view.get("fsync_estimated_from", "")
    return Insight(
        check="fsync_share", mode=evidence.mode, level="warn",
        title=f"fsync takes {_percent(share)} of the checkpoint write time",
        details=[f"Darshan counts fsync time in POSIX_F_WRITE_TIME; the fsync part is estimated as {source}",
                 "each fsync waits until the file's data is on the storage servers"],
        suggestion="Keep the fsync if a checkpoint must survive a node crash, but take it off the training loop: "
                   "with dcp_async the background save pays it. If surviving a job crash is enough, set "
                   "checkpoint.fsync: false (DCP FileSystemWriter(sync_files=False)), and sync once per checkpoint "
                   "only the file that marks it complete.",
        figure=f"plots/{evidence.mode}_ranks.png",
        values={"fsync_share": float(share), "estimated_from": source},
        threshold={"fsync_share": limits.fsync_share},
    )


def check_many_files(evidence: ModeEvidence, limits: Thresholds) -> Insight | None:
    """Report checkpoints made of more files than the ranks that write them."""
    checkpoints = evidence.per_checkpoint
    if checkpoints.empty:
        return None
    files = float(checkpoints["files"].mean())
    writers = max(float(checkpoints["writing_ranks"].mean()), 1.0)
    if files / writers <= limits.files_per_writing_rank:
        return None
    return Insight(
        check="many_files", mode=evidence.mode, level="info",
        title=f"Each checkpoint is {files:.0f} files for {writers:.0f} writing ranks",
        details=["every file is a create, an open, a close and often a rename on the metadata server",
                 "the file count grows with the number of writing ranks, and all of them create their files at once"],
        suggestion="Keep one file per rank at most (DCP FileSystemWriter(single_file_per_rank=True, thread_count=1)); "
                   "at thousands of ranks write to one directory per checkpoint with a Lustre DNE-striped directory "
                   "or aggregate ranks per node before writing, and delete old checkpoints in the background.",
        figure="plots/modes_files.png",
        values={"files_per_checkpoint": files, "writing_ranks": writers},
        threshold={"files_per_writing_rank": limits.files_per_writing_rank},
    )


def check_metadata_heavy(evidence: ModeEvidence, limits: Thresholds) -> Insight | None:
    """Report checkpoints whose metadata calls take much time or are many per file (Drishti metadata_time_rank)."""
    checkpoints = evidence.per_checkpoint
    if checkpoints.empty:
        return None
    # A checkpoint's I/O includes the reads of the restore that follows the last save.
    io_s = checkpoints["write_time_s"] + checkpoints["read_time_s"] + checkpoints["meta_time_s"]
    share = (checkpoints["meta_time_s"] / io_s.where(io_s > 0)).fillna(0)
    per_file = checkpoints["metadata_ops"] / checkpoints["files"].where(checkpoints["files"] > 0)
    slow_metadata = (share > limits.metadata_share) & (checkpoints["meta_time_s"] >= limits.metadata_min_s)
    heavy = checkpoints[slow_metadata | (per_file.fillna(0) > limits.metadata_ops_per_file)]
    ranks = evidence.per_rank
    slow_ranks = ranks[ranks["checkpoint_meta_time_s"] > limits.metadata_time_rank_s] if len(ranks) else ranks
    if heavy.empty and slow_ranks.empty:
        return None

    details = [f"{row.checkpoint}: {row.metadata_ops:,} opens, stats and renames on {row.files} files, "
               f"metadata {row.meta_time_s:.3f} s against {row.write_time_s + row.read_time_s:.3f} s of writes and reads"
               for row in heavy.itertuples()]
    details += [f"rank {int(row.rank)}: {row.checkpoint_meta_time_s:.1f} s in metadata calls" for row in slow_ranks.itertuples()]
    return Insight(
        check="metadata_heavy", mode=evidence.mode, level="warn",
        title=f"{len(heavy)} of {len(checkpoints)} checkpoints are metadata-heavy",
        details=details,
        suggestion="Open each file once and keep it open while writing. torch.save(obj, path) in torch 2.14 opens "
                   "the file once per record it writes (53 opens for 50 tensors under Darshan 3.5), while "
                   "torch.save(obj, stream) on a file opened once by the caller opens it once. Avoid stat and exists "
                   "calls per file, and create a checkpoint's files in a directory no other rank lists meanwhile.",
        figure="plots/modes_files.png",
        values={"checkpoints": len(checkpoints), "metadata_heavy": len(heavy),
                "max_metadata_ops_per_file": float(per_file.max()) if per_file.notna().any() else None,
                "max_metadata_share": float(share.max())},
        threshold={"metadata_share": limits.metadata_share, "metadata_min_s": limits.metadata_min_s,
                   "metadata_ops_per_file": limits.metadata_ops_per_file,
                   "metadata_time_rank_s": limits.metadata_time_rank_s},
    )


def describe_problem(problem: dict) -> str:
    """Describe one log problem with the process it concerns."""
    process = problem["role"] or "process"
    if problem["rank"] is not None:
        process += f" of rank {problem['rank']}"
    where = f"PID {problem['pid']}" + (f", {problem['log']}" if problem["log"] else "")
    return f"{problem['problem']}: {process} ({where}): {problem['detail']}"


def check_log_problems(evidence: ModeEvidence, limits: Thresholds, max_records: int | None = None) -> Insight | None:
    """Report logs that are partial, unfinished or unreadable, and processes that left no log."""
    problems = evidence.view.get("log_problems") or []
    if not problems:
        return None
    details = [describe_problem(problem) for problem in problems]
    limit = f"now {max_records:,}" if max_records else "the default is 1,024"
    suggestions = []
    if any(p["problem"] == "partial" for p in problems):
        suggestions.append(f"A partial module stopped recording when it ran out of records: raise MAX_RECORDS for it in "
                           f"the Darshan config file (darshan.max_records in config/config.yaml, {limit}; a process "
                           "that imports torch opens more than 1,024 files) and MODMEM if the memory runs out first.")
    if any(p["problem"] in ("unreadable", "missing") for p in problems):
        suggestions.append("A process without a finished log did not shut Darshan down: let every process exit "
                           "normally (no SIGKILL or os._exit), check that LD_PRELOAD reaches processes it starts, and "
                           "raise darshan.log_wait_s when the file system shows new files late.")
    return Insight(
        check="log_problems", mode=evidence.mode, level="high",
        title=f"{len(problems)} Darshan logs are partial, unreadable or missing, so the figures undercount",
        details=details, suggestion=" ".join(suggestions), figure=None,
        values={"problems": [p["problem"] for p in problems]},
        threshold={"max_records": max_records},
    )


CHECKS = (check_single_writer, check_rank_imbalance, check_small_writes, check_fsync_share,
          check_many_files, check_metadata_heavy)


def evaluate(evidence: list[ModeEvidence], limits: Thresholds = Thresholds(),
             max_records: int | None = None) -> list[Insight]:
    """Run every check on every traced mode and return the insights, most severe first."""
    found = []
    for mode in evidence:
        if not mode.metrics.get("traced", True):
            continue
        found += [insight for check in CHECKS if (insight := check(mode, limits)) is not None]
        problem = check_log_problems(mode, limits, max_records)
        if problem is not None:
            found.append(problem)
    return sorted(found, key=lambda insight: LEVELS.index(insight.level))


# ---- output -------------------------------------------------------------------------------

def to_markdown(insights: list[Insight], limits: Thresholds) -> str:
    """Render the insights for people, one section each, then the thresholds."""
    lines = ["# Checkpoint I/O insights", ""]
    if not insights:
        lines += ["No check crossed its threshold.", ""]
    for insight in insights:
        lines += [f"## [{insight.level.upper()}] {insight.mode}: {insight.title}", ""]
        lines += [f"- {detail}" for detail in insight.details]
        lines += ["", f"**Suggested change:** {insight.suggestion}", ""]
        if insight.figure:
            lines += [f"Figure: `{insight.figure}`", ""]
        lines += [f"Check `{insight.check}`, threshold: "
                  + ", ".join(f"{name} = {value}" for name, value in insight.threshold.items()), ""]
    lines += ["## Thresholds", "", "| name | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in asdict(limits).items()]
    return "\n".join(lines) + "\n"


def table_html(summary: pd.DataFrame) -> str:
    """Render the comparison table with one column per mode, as summary.md does."""
    table = summary.set_index("mode").T.rename(index=HEADERS)
    table.index.name = "figure"
    return table.to_html(float_format=lambda value: f"{value:.4g}", na_rep="–", border=0)


def figure_html(results_dir: Path, figure: str | None) -> str:
    """Embed a figure as a data URI, so the page needs no other file."""
    if figure is None or not (results_dir / figure).is_file():
        return ""
    data = base64.b64encode((results_dir / figure).read_bytes()).decode()
    return f'<p><img alt="{html.escape(figure)}" src="data:image/png;base64,{data}" style="max-width:100%"></p>'


def to_html(insights: list[Insight], summary: pd.DataFrame, results_dir: Path) -> str:
    """Render the comparison table and the insights, with their figures, as one self-contained page."""
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>Checkpoint I/O</title></head><body>",
             "<h1>Checkpoint I/O by mode</h1>", table_html(summary), "<h1>Insights</h1>"]
    if not insights:
        parts.append("<p>No check crossed its threshold.</p>")
    for insight in insights:
        parts.append(f"<h2>[{insight.level.upper()}] {html.escape(insight.mode)}: {html.escape(insight.title)}</h2>")
        parts.append("<ul>" + "".join(f"<li>{html.escape(detail)}</li>" for detail in insight.details) + "</ul>")
        parts.append(f"<p><b>Suggested change:</b> {html.escape(insight.suggestion)}</p>")
        parts.append(figure_html(results_dir, insight.figure))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics", type=Path, nargs="+", required=True, help="metrics.json of each mode")
    parser.add_argument("--rank-views", type=Path, nargs="+", required=True,
                        help="rank_view.json of each mode, in the order of --metrics; its CSV files are read beside it")
    parser.add_argument("--summary", type=Path, required=True, help="summary.csv, shown at the top of the HTML page")
    parser.add_argument("--max-records", type=int, help="darshan.max_records of the run, named in the suggestion")
    parser.add_argument("--markdown", type=Path, required=True)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--html", type=Path, required=True,
                        help="self-contained page; figures are read relative to its directory")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if len(args.metrics) != len(args.rank_views):
        parser.error(f"give one --rank-views file per --metrics file, not {len(args.rank_views)} for {len(args.metrics)}")

    limits = Thresholds()
    evidence = [ModeEvidence.load(metrics, view.parent) for metrics, view in zip(args.metrics, args.rank_views)]
    insights = evaluate(evidence, limits, args.max_records)

    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    args.markdown.write_text(to_markdown(insights, limits))
    args.json.write_text(json.dumps({"thresholds": asdict(limits), "insights": [asdict(i) for i in insights]},
                                    indent=1, default=str) + "\n")
    args.html.write_text(to_html(insights, pd.read_csv(args.summary), args.html.parent))
    log.info("%d insights: %s", len(insights), ", ".join(f"{i.mode} {i.check}" for i in insights) or "none")
    return 0


if __name__ == "__main__":
    sys.exit(main())
