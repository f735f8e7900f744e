"""Reduce every run of a sweep to one table: median, minimum and maximum per mode and point.

A sweep runs each mode at each point (nodes x ranks per node x model) several
times. ``sweep_runs.csv`` has one row per run, with the same figures as the
single run's comparison table plus the point. ``sweep.csv`` groups the repeats
and gives each figure's median, minimum, maximum and relative spread
((maximum - minimum) / median). A reader so sees both the value and its noise.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import humanize
import pandas as pd

from summary_table import NOT_TRACED, add_baseline, table_row

log = logging.getLogger("sweep_table")

POINT_COLUMNS = ["model", "model_name", "nodes", "ranks_per_node", "ranks", "mode"]

# Figures reduced over the repeats -> header in sweep.md (None: only in the CSV files).
FIGURES = {
    "checkpoint_size_bytes": "checkpoint size",
    "blocking_mean_s": "blocking per checkpoint (s)",
    "completion_mean_s": "save completed after (s)",
    "save_throughput_mib_per_s": "save throughput (MiB/s)",
    "write_bandwidth_mib_per_s": "Darshan write bandwidth, slowest rank (MiB/s)",
    "bandwidth_by_slowest_mib_per_s": None,
    "baseline_write_mib_per_s": "baseline write (MiB/s)",
    "save_fraction_of_baseline": "save / baseline",
    "darshan_fraction_of_baseline": None,
    "restore_throughput_mib_per_s": "restore (MiB/s)",
    "rank_imbalance_bytes": None,
    "files_opened_checkpoint": None,
    "slowest_rank_io_time_s": None,
}


class SweepTableError(ValueError):
    """Raised when a run named on the command line has no results to read."""


def parse_run(run: str) -> tuple[str, str, str]:
    """Split ``point/repeat/mode`` into its three parts."""
    parts = run.split("/")
    if len(parts) != 3 or not all(parts):
        raise SweepTableError(f"--runs entry {run!r} is not point/repeat/mode, such as n1_r2_small_vit/repeat1/dcp")
    return parts[0], parts[1], parts[2]


def read_json(path: Path, what: str, required: tuple[str, ...] = ()) -> dict:
    """Read one JSON object of a run, with an error that names the file and the fix when it is missing or damaged."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise SweepTableError(f"{what} {path} does not exist; rerun the sweep so that its rules write it") from None
    except json.JSONDecodeError as error:
        raise SweepTableError(f"{what} {path} is not valid JSON ({error}); delete it and rerun the sweep") from None
    missing = [key for key in required if not isinstance(data, dict) or key not in data]
    if not isinstance(data, dict) or missing:
        found = f"lacks {', '.join(missing)}" if isinstance(data, dict) else f"is a JSON {type(data).__name__}, not an object"
        raise SweepTableError(f"{what} {path} {found}, so it was not written by this workflow; delete it and rerun the sweep")
    return data


def run_row(sweep_dir: Path, run: str, with_baseline: bool) -> dict:
    """Build one run's row: the comparison table's figures, judged against the baseline of its point and repeat.

    ``with_baseline`` is false when the baseline is disabled, so that a baseline.json
    left from an earlier run is not read.
    """
    point, repeat, mode = parse_run(run)
    run_dir = sweep_dir / point / repeat / mode
    metrics = read_json(run_dir / "metrics" / "metrics.json", "the metrics file", required=("mode",))
    manifest = read_json(run_dir / "train" / "manifest.json", "the manifest", required=("world_size", "settings"))
    baseline = None
    if with_baseline:
        baseline = read_json(sweep_dir / point / repeat / "baseline" / "baseline.json", "the storage baseline",
                             required=("write_mib_per_s", "read_mib_per_s"))

    row = add_baseline(table_row(metrics), baseline)
    application = metrics.get("application") or {}
    described = (manifest.get("settings") or {}).get("sweep") or {}
    row.update({
        "point": point,
        "repeat": repeat,
        "model": described.get("model", point),
        "model_name": described.get("model_name"),
        "nodes": described.get("nodes", manifest.get("nodes")),
        "ranks_per_node": described.get("ranks_per_node"),
        "ranks": manifest.get("world_size", described.get("ranks")),
        "cores": manifest.get("cores"),
        "oversubscribed": bool(manifest.get("oversubscribed")),
        "checkpoint_size_bytes": application.get("checkpoint_size_bytes"),
        # Mean checkpoint size over the mean time until a save was complete.
        "save_throughput_mib_per_s": application.get("completion_throughput_mib_per_s"),
    })
    return row


def run_table(sweep_dir: Path, runs: list[str], with_baseline: bool = True) -> pd.DataFrame:
    """Build the table of all runs, one row per run, with the point and repeat first."""
    rows = [run_row(sweep_dir, run, with_baseline) for run in runs]
    table = pd.DataFrame(rows)
    first = ["point", "repeat", *POINT_COLUMNS, "cores", "oversubscribed"]
    return table[first + [column for column in table.columns if column not in first]]


def numeric(values: pd.Series) -> pd.Series:
    """Convert a column to numbers. Cells that read 'not traced' or are empty become NaN."""
    return pd.to_numeric(values.replace({NOT_TRACED: None, "": None}), errors="coerce")


def reduce_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Group the repeats of each mode and point; each figure gets its median, minimum, maximum and spread."""
    mode_order = list(dict.fromkeys(runs["mode"]))
    rows = []
    for keys, group in runs.groupby(POINT_COLUMNS, sort=False, dropna=False):
        row = {"point": group["point"].iloc[0], **dict(zip(POINT_COLUMNS, keys))}
        row["runs"] = len(group)
        row["oversubscribed_runs"] = int(group["oversubscribed"].sum())
        integrity = sorted(set(group["integrity"].dropna().astype(str)))
        row["integrity"] = "; ".join(integrity)
        for figure in FIGURES:
            values = numeric(group[figure]) if figure in group else pd.Series(dtype=float)
            values = values.dropna()
            median = values.median() if len(values) else None
            row[f"{figure}_median"] = median
            row[f"{figure}_min"] = values.min() if len(values) else None
            row[f"{figure}_max"] = values.max() if len(values) else None
            row[f"{figure}_spread"] = ((values.max() - values.min()) / median) if len(values) and median else None
        rows.append(row)
    table = pd.DataFrame(rows)
    table["_mode_order"] = table["mode"].map(mode_order.index)
    table = table.sort_values(["model", "nodes", "ranks_per_node", "_mode_order"], kind="stable")
    return table.drop(columns="_mode_order").reset_index(drop=True)


def _number(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def format_cell(figure: str, median, low, high) -> str:
    """Format a cell as 'median (min–max)', sizes in binary units, or '–' when no run has the figure."""
    if median is None or pd.isna(median):
        return "–"
    show = (lambda value: humanize.naturalsize(value, binary=True)) if figure.endswith("_bytes") else _number
    if low == high:
        return show(median)
    return f"{show(median)} ({show(low)}–{show(high)})"


def to_markdown(table: pd.DataFrame) -> str:
    """Render the reduced table for people: one row per model, ranks and mode."""
    readable = pd.DataFrame({
        "model": table["model"],
        "nodes": table["nodes"],
        "ranks": table["ranks"],
        "mode": table["mode"],
        "runs": [f"{runs}" + (f" ({over} oversubscribed)" if over else "")
                 for runs, over in zip(table["runs"], table["oversubscribed_runs"])],
        **{header: [format_cell(figure, *values) for values in zip(table[f"{figure}_median"], table[f"{figure}_min"],
                                                                   table[f"{figure}_max"])]
           for figure, header in FIGURES.items() if header},
        "integrity": table["integrity"],
    })
    note = ("Each cell: median over the repeats, with the minimum and maximum in brackets. "
            "Oversubscribed runs had more ranks than cores, so their times include waiting for a core.\n\n")
    return note + readable.to_markdown(index=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep-dir", type=Path, required=True, help="results/sweep")
    parser.add_argument("--runs", nargs="+", required=True, help="point/repeat/mode of each run")
    parser.add_argument("--runs-csv", type=Path, required=True)
    parser.add_argument("--csv", type=Path, required=True)
    parser.add_argument("--markdown", type=Path, required=True)
    parser.add_argument("--no-baseline", action="store_true",
                        help="the storage baseline is disabled: leave the baseline columns empty")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    try:
        runs = run_table(args.sweep_dir, args.runs, with_baseline=not args.no_baseline)
    except SweepTableError as error:
        log.error("%s", error)
        return 1
    reduced = reduce_runs(runs)
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    runs.to_csv(args.runs_csv, index=False)
    reduced.to_csv(args.csv, index=False)
    args.markdown.write_text(to_markdown(reduced))
    log.info("wrote %s (%d runs) and %s, %s (%d modes x points)", args.runs_csv, len(runs), args.csv,
             args.markdown, len(reduced))
    return 0


if __name__ == "__main__":
    sys.exit(main())
