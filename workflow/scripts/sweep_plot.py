"""Plot a sweep: write bandwidth and blocking time against ranks and against checkpoint size.

One figure of four panels from ``sweep.csv``. The left column has the ranks on
the x axis, with one line per mode and model. The right column has the checkpoint
size there, with one line per mode and rank count. Each point is the median over the
repeats, with a bar from the minimum to the maximum. The bandwidth is Darshan's:
checkpoint bytes over the slowest rank's write and fsync time. When the runs were
not traced, it is the save throughput instead: checkpoint size over the time
until the save was complete. The storage baseline's write bandwidth is drawn in grey. The
plotted numbers go to a CSV file as well.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from plots import save  # noqa: E402

log = logging.getLogger("sweep_plot")

MIB = 1024**2
VALUE_COLUMNS = ["panel", "mode", "series", "x", "median", "min", "max"]
LINE_STYLES = ["-", "--", ":", "-."]
MARKERS = ["o", "s", "^", "D", "v", "P"]


def bandwidth_figure(summary: pd.DataFrame) -> tuple[str, str]:
    """Choose the bandwidth figure to plot and its axis label: Darshan's when any run was traced."""
    if summary["write_bandwidth_mib_per_s_median"].notna().any():
        return "write_bandwidth_mib_per_s", "write bandwidth, Darshan, slowest rank (MiB/s)"
    return "save_throughput_mib_per_s", "save throughput, size / time to complete (MiB/s)"


def model_sizes(summary: pd.DataFrame) -> pd.Series:
    """Return each row's model checkpoint size: the median over all modes and points of that model.

    Modes of one model differ by a few KiB of metadata; one size per model puts
    their points above each other.
    """
    return summary.groupby("model")["checkpoint_size_bytes_median"].transform("median")


def size_axis(axes: plt.Axes, sizes_mib: list[float]) -> None:
    """Label the size axis in plain MiB; log scale only when the sizes span more than a factor of 4."""
    if sizes_mib and max(sizes_mib) > 4 * min(sizes_mib):
        axes.set_xscale("log")
    axes.set_xticks(sizes_mib, [f"{size:,.0f}" if size >= 10 else f"{size:.2g}" for size in sizes_mib])
    axes.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    axes.set_xlabel("checkpoint size (MiB)")


def panel_values(summary: pd.DataFrame, figure: str, x_column: str, series_column: str, panel: str) -> pd.DataFrame:
    """Collect the points of one panel: per mode and series, the x value and the figure's median, minimum and maximum."""
    rows = []
    for _, row in summary.iterrows():
        x = row[x_column]
        if x_column == "model_size_bytes":
            x = x / MIB if pd.notna(x) else x
        if pd.isna(x) or pd.isna(row[f"{figure}_median"]):
            continue
        rows.append({"panel": panel, "mode": row["mode"], "series": str(row[series_column]), "x": float(x),
                     "median": float(row[f"{figure}_median"]), "min": float(row[f"{figure}_min"]),
                     "max": float(row[f"{figure}_max"])})
    # Rows keep the table's order of modes, and each line runs from left to right.
    values = pd.DataFrame(rows, columns=VALUE_COLUMNS)
    mode_order = {mode: index for index, mode in enumerate(dict.fromkeys(summary["mode"]))}
    return values.sort_values(["mode", "series", "x"], key=lambda column: column.map(mode_order)
                              if column.name == "mode" else column, kind="stable")


def baseline_values(summary: pd.DataFrame, x_column: str, series_column: str, panel: str) -> pd.DataFrame:
    """Collect the storage baseline's write bandwidth at each x, one series per model or rank count.

    The baseline of a point is the same for every mode, so the first mode's rows give it.
    """
    figure = "baseline_write_mib_per_s"
    first_mode = summary["mode"].iloc[0]
    values = panel_values(summary[summary["mode"] == first_mode], figure, x_column, series_column, panel)
    return values.assign(mode="storage baseline")


def draw_panel(axes: plt.Axes, values: pd.DataFrame, modes: list[str], baseline: pd.DataFrame | None) -> None:
    """Draw one panel: a line with min-max error bars per mode and series, and the baseline in grey."""
    colors = {mode: f"C{index}" for index, mode in enumerate(modes)}
    series = list(dict.fromkeys(values["series"]))
    for (mode, label), points in values.groupby(["mode", "series"], sort=False):
        index = series.index(label)
        axes.errorbar(points["x"], points["median"],
                      yerr=[points["median"] - points["min"], points["max"] - points["median"]],
                      color=colors[mode], linestyle=LINE_STYLES[index % len(LINE_STYLES)],
                      marker=MARKERS[index % len(MARKERS)], capsize=3,
                      label=f"{mode}, {label}" if len(series) > 1 else mode)
    if baseline is not None and not baseline.empty:
        for index, (label, points) in enumerate(baseline.groupby("series", sort=False)):
            axes.plot(points["x"], points["median"], color="0.5", linestyle=LINE_STYLES[index % len(LINE_STYLES)],
                      marker="_", markersize=14, linewidth=1, label=f"storage baseline, {label}" if len(series) > 1 else "storage baseline")
    axes.grid(True, alpha=0.3)


def runs_text(runs: pd.Series) -> str:
    """Describe the runs behind each point for the title: 'median of 3 runs', or 'median of 1 to 3 runs'."""
    low, high = int(runs.min()), int(runs.max())
    if low == high == 1:
        return "1 run per point"
    if low == high:
        return f"median of {high} runs"
    return f"median of {low} to {high} runs"


def plot_sweep(summary: pd.DataFrame, output_dir: Path) -> pd.DataFrame:
    """Draw the sweep figure, write it as PNG and SVG, and return the plotted values."""
    modes = list(dict.fromkeys(summary["mode"]))
    figure, label = bandwidth_figure(summary)
    summary = summary.assign(
        ranks_label=summary["ranks"].map(lambda ranks: f"{ranks} rank" + ("s" if ranks != 1 else "")),
        model_size_bytes=model_sizes(summary),
    )
    panels = [
        ("bandwidth_vs_ranks", figure, "ranks", "model", (0, 0)),
        ("blocking_vs_ranks", "blocking_mean_s", "ranks", "model", (1, 0)),
        ("bandwidth_vs_size", figure, "model_size_bytes", "ranks_label", (0, 1)),
        ("blocking_vs_size", "blocking_mean_s", "model_size_bytes", "ranks_label", (1, 1)),
    ]
    drawing, axes = plt.subplots(2, 2, figsize=(13, 8.5), squeeze=False)
    collected = []
    for panel, panel_figure, x_column, series_column, (row, column) in panels:
        values = panel_values(summary, panel_figure, x_column, series_column, panel)
        baseline = None
        if panel_figure == figure and "baseline_write_mib_per_s_median" in summary:
            baseline = baseline_values(summary, x_column, series_column, panel)
            collected.append(baseline)
        collected.append(values)
        draw_panel(axes[row][column], values, modes, baseline)

    ranks = sorted(int(r) for r in summary["ranks"].unique())
    for row in range(2):
        axes[row][0].set_xscale("log", base=2)
        axes[row][0].set_xticks(ranks, [str(r) for r in ranks])
        axes[row][0].set_xlabel("ranks")
        size_axis(axes[row][1], sorted(summary["model_size_bytes"].dropna().unique() / MIB))
    for column in range(2):
        axes[0][column].set_ylabel(label)
        axes[1][column].set_ylabel("training blocked per checkpoint (s)")
        for row in range(2):
            # Room above the highest point, so that a marker never sits on the frame.
            axes[row][column].set_ylim(bottom=0, top=axes[row][column].get_ylim()[1] * 1.08)
    axes[0][0].set_title("against ranks")
    axes[0][1].set_title("against checkpoint size")
    for column in range(2):
        axes[0][column].legend(fontsize="small")
    drawing.suptitle(f"Checkpoint sweep: {runs_text(summary['runs'])}, bars from minimum to maximum")
    save(drawing, output_dir, "sweep")
    return pd.concat(collected, ignore_index=True) if collected else pd.DataFrame(columns=VALUE_COLUMNS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--summary", type=Path, required=True, help="sweep.csv")
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--values", type=Path, required=True, help="CSV of the plotted numbers")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    summary = pd.read_csv(args.summary)
    if summary.empty:
        log.error("%s has no rows; the sweep has no runs to plot", args.summary)
        return 1
    values = plot_sweep(summary, args.output_dir)
    args.values.parent.mkdir(parents=True, exist_ok=True)
    values.to_csv(args.values, index=False)
    log.info("wrote %s and %s", args.output_dir / "sweep.png", args.values)
    return 0


if __name__ == "__main__":
    sys.exit(main())
