"""Aggregate every mode's metrics into one comparison table (CSV and Markdown).

The table shows, per mode: what I/O did it do, how many files did it open, how
much data did it write, and what bandwidth did it reach, both as Darshan saw it
and as the training loop felt it (the time it was blocked per checkpoint).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import humanize
import pandas as pd

log = logging.getLogger("summary_table")

NOT_TRACED = "not traced"

# Column name in summary.csv -> header in summary.md.
HEADERS = {
    "mode": "mode",
    "source": "source",
    "ranks": "ranks",
    "checkpoints": "checkpoints",
    "files_opened_total": "files opened (total)",
    "files_opened_checkpoint": "files opened (checkpoint)",
    "bytes_written_total": "bytes written (total)",
    "bytes_written_checkpoint": "bytes written (checkpoint)",
    "checkpoint_bytes_by_rank": "checkpoint bytes by rank",
    "write_ops_checkpoint": "write ops (checkpoint)",
    "mean_write_size_bytes": "mean write size",
    "common_write_size_bytes": "most common access size (reads and writes)",
    "fsyncs_checkpoint": "fsyncs",
    "slowest_rank_io_time_s": "Darshan I/O time, slowest rank (s)",
    "bandwidth_by_slowest_mib_per_s": "Darshan bandwidth by slowest rank (MiB/s)",
    "write_bandwidth_mib_per_s": "Darshan write bandwidth (MiB/s, checkpoint bytes / slowest rank's write and fsync time)",
    "rank_imbalance_bytes": "rank imbalance (max/mean bytes)",
    "bytes_read_checkpoint": "bytes read (checkpoint)",
    "read_time_checkpoint_s": "Darshan read time, summed over processes (s)",
    "read_bandwidth_mib_per_s": "Darshan read bandwidth (MiB/s, bytes / summed read time)",
    "blocking_mean_s": "blocking per checkpoint (s)",
    "completion_mean_s": "save completed after (s)",
    "blocking_throughput_mib_per_s": "checkpoint size / blocking time (MiB/s, not an I/O rate)",
    "checkpoint_bytes_on_disk": "checkpoint bytes on disk (all checkpoints)",
    "restore_load_max_s": "restore of last checkpoint, slowest rank (s)",
    "restore_throughput_mib_per_s": "restore throughput (MiB/s, load and deserialisation)",
    "restore_page_cache": "page cache before restore",
    "integrity": "integrity of last checkpoint",
    "baseline_write_mib_per_s": "storage baseline write (MiB/s)",
    "save_fraction_of_baseline": "save throughput / baseline write",
    "darshan_fraction_of_baseline": "Darshan write bandwidth / baseline write",
    "baseline_read_mib_per_s": "storage baseline read (MiB/s)",
    "restore_fraction_of_baseline": "restore throughput / baseline read",
    "flags": "flags",
}
BYTE_COLUMNS = {"bytes_written_total", "bytes_written_checkpoint", "mean_write_size_bytes",
                "common_write_size_bytes", "checkpoint_bytes_on_disk", "bytes_read_checkpoint"}
DARSHAN_COLUMNS = ["files_opened_total", "files_opened_checkpoint", "bytes_written_total",
                   "bytes_written_checkpoint", "checkpoint_bytes_by_rank", "write_ops_checkpoint",
                   "mean_write_size_bytes", "common_write_size_bytes", "fsyncs_checkpoint",
                   "slowest_rank_io_time_s", "bandwidth_by_slowest_mib_per_s", "write_bandwidth_mib_per_s",
                   "rank_imbalance_bytes"]


def table_row(metrics: dict) -> dict:
    """Flatten one mode's metrics into a row of the comparison table."""
    application = metrics.get("application") or {}
    row = {
        "mode": metrics["mode"],
        "source": metrics.get("source", "run"),
        "ranks": metrics.get("world_size") or metrics.get("ranks"),
        "checkpoints": application.get("checkpoints") or metrics.get("checkpoints_written"),
        "blocking_mean_s": application.get("blocking_mean_s"),
        "completion_mean_s": application.get("completion_mean_s"),
        "blocking_throughput_mib_per_s": application.get("blocking_throughput_mib_per_s"),
        "checkpoint_bytes_on_disk": application.get("checkpoint_bytes_on_disk"),
        "restore_load_max_s": application.get("restore_load_max_s"),
        "restore_throughput_mib_per_s": application.get("restore_throughput_mib_per_s"),
        "restore_page_cache": application.get("restore_page_cache"),
        "integrity": application.get("integrity"),
        "flags": "; ".join(metrics.get("flags", [])),
    }
    if not metrics.get("traced", True):
        read_columns = ["bytes_read_checkpoint", "read_time_checkpoint_s", "read_bandwidth_mib_per_s"]
        row.update({column: NOT_TRACED for column in [*DARSHAN_COLUMNS, *read_columns]})
        return row

    total, checkpoint = metrics["all"], metrics["checkpoint"]
    sizes = checkpoint.get("common_access_sizes") or []
    row.update({
        "files_opened_total": total["files_opened"],
        "files_opened_checkpoint": checkpoint["files_opened"],
        "bytes_written_total": total["bytes_written"],
        "bytes_written_checkpoint": checkpoint["bytes_written"],
        "checkpoint_bytes_by_rank": " / ".join(str(r["checkpoint_bytes_written"]) for r in metrics.get("per_rank", [])),
        "write_ops_checkpoint": checkpoint["write_ops"],
        "mean_write_size_bytes": checkpoint["mean_write_size_bytes"],
        "common_write_size_bytes": sizes[0][0] if sizes else None,
        "fsyncs_checkpoint": checkpoint["fsyncs"],
        "slowest_rank_io_time_s": checkpoint["slowest_rank_io_time_s"],
        "bandwidth_by_slowest_mib_per_s": checkpoint["bandwidth_by_slowest_mib_per_s"],
        "write_bandwidth_mib_per_s": checkpoint.get("write_bandwidth_by_slowest_mib_per_s"),
        "rank_imbalance_bytes": metrics.get("rank_imbalance_bytes"),
        "bytes_read_checkpoint": checkpoint.get("bytes_read"),
        "read_time_checkpoint_s": checkpoint.get("read_time_s"),
        # Bytes over read time summed across processes: the mean bandwidth one process saw while reading.
        "read_bandwidth_mib_per_s": (checkpoint["bytes_read"] / 1024**2 / checkpoint["read_time_s"]
                                     if checkpoint.get("bytes_read") and checkpoint.get("read_time_s") else None),
    })
    if metrics.get("ranks") and row["ranks"] is None:
        row["ranks"] = metrics["ranks"]
    return row


def ratio(numerator, denominator) -> float | None:
    """Return numerator / denominator, or None when either is missing, not a number or zero."""
    if not isinstance(numerator, (int, float)) or not isinstance(denominator, (int, float)) or not denominator:
        return None
    return numerator / denominator


def add_baseline(row: dict, baseline: dict | None) -> dict:
    """Judge a mode's bandwidths against the storage baseline.

    The save throughput is the checkpoint size over the time until the save was
    complete, which for synchronous modes is the time training was blocked. So an
    async save is judged by when its data was on disk, not by how briefly it blocked.
    """
    if not baseline:
        return row
    completion_s = row.get("completion_mean_s")
    size_bytes = row.get("checkpoint_bytes_on_disk")
    checkpoints = row.get("checkpoints")
    save_mib_per_s = None
    if isinstance(size_bytes, (int, float)) and isinstance(checkpoints, (int, float)) and checkpoints:
        save_mib_per_s = ratio(size_bytes / checkpoints / 1024**2, completion_s)
    row.update({
        "baseline_write_mib_per_s": baseline["write_mib_per_s"],
        "baseline_read_mib_per_s": baseline["read_mib_per_s"],
        "save_fraction_of_baseline": ratio(save_mib_per_s, baseline["write_mib_per_s"]),
        "darshan_fraction_of_baseline": ratio(row.get("write_bandwidth_mib_per_s"), baseline["write_mib_per_s"]),
        "restore_fraction_of_baseline": ratio(row.get("restore_throughput_mib_per_s"), baseline["read_mib_per_s"]),
    })
    return row


def build_table(metrics: list[dict], baseline: dict | None = None) -> pd.DataFrame:
    """Build the comparison table, one row per mode, in the order given."""
    return pd.DataFrame([add_baseline(table_row(m), baseline) for m in metrics], columns=list(HEADERS))


def _format(column: str, value) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "–"
    if isinstance(value, str):
        if column == "checkpoint_bytes_by_rank" and value not in ("", NOT_TRACED):
            return " / ".join(humanize.naturalsize(int(v), binary=True) for v in value.split(" / "))
        return value or "–"
    if column in BYTE_COLUMNS:
        return humanize.naturalsize(value, binary=True)
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def to_markdown(table: pd.DataFrame) -> str:
    """Render the table for people: one column per mode, one row per figure."""
    readable = pd.DataFrame({
        HEADERS[column]: [_format(column, value) for value in table[column]] for column in table.columns
    })
    transposed = readable.set_index("mode").T
    transposed.index.name = "figure"
    return transposed.to_markdown() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics", type=Path, nargs="+", required=True, help="metrics.json of each mode")
    parser.add_argument("--csv", type=Path, required=True)
    parser.add_argument("--markdown", type=Path, required=True)
    parser.add_argument("--baseline", type=Path, help="baseline.json of the storage baseline job")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    metrics = [json.loads(path.read_text()) for path in args.metrics]
    baseline = json.loads(args.baseline.read_text()) if args.baseline else None
    table = build_table(metrics, baseline)
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.csv, index=False)
    args.markdown.write_text(to_markdown(table))
    log.info("wrote %s and %s (%d modes)", args.csv, args.markdown, len(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
