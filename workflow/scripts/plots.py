"""Draw the figures of checkpoint I/O with matplotlib: the modes side by side, and each mode per rank.

``modes`` draws one bar chart per figure with a bar per mode, from the comparison
table (summary.csv) and each mode's per-rank view. ``ranks`` draws one mode's
I/O timeline per rank against its training phases, its bytes and time per rank,
and its write sizes. Every figure is written as PNG and SVG, and the numbers it
plots are written to a CSV file (figure, mode, series, category, value), so that
tests and readers can check them against the table they came from.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from darshan_metrics import MIB  # noqa: E402
from summary_table import NOT_TRACED  # noqa: E402

log = logging.getLogger("plots")

MODE_FIGURES = ("checkpoint_bytes", "bandwidth", "blocking", "files", "hidden")
RANK_FIGURES = ("timeline", "ranks", "write_sizes")
FORMATS = ("png", "svg")
VALUE_COLUMNS = ["figure", "mode", "series", "category", "value"]
COLORS = {"write": "tab:blue", "read": "tab:orange", "open_close": "0.6", "blocked": "tab:red",
          "in_flight": "tab:purple", "train_loop": "tab:green", "fsync": "tab:cyan", "meta": "tab:olive"}

# Stable SVG element ids and no dates, so that rerunning on the same data gives the same files.
matplotlib.rcParams["svg.hashsalt"] = "checkpoint-io"
SAVE_METADATA = {"png": {"Software": None}, "svg": {"Date": None}}


def save(figure: plt.Figure, output_dir: Path, name: str) -> list[Path]:
    """Write a figure as PNG and SVG under ``output_dir`` and close it."""
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for extension in FORMATS:
        path = output_dir / f"{name}.{extension}"
        figure.savefig(path, dpi=150, bbox_inches="tight", metadata=SAVE_METADATA[extension])
        paths.append(path)
    plt.close(figure)
    return paths


def number(value: object) -> float | None:
    """Return a table cell as a float, or None for a missing or 'not traced' cell."""
    if value is None or (isinstance(value, str) and value in ("", NOT_TRACED)):
        return None
    value = float(value)
    return None if pd.isna(value) else value


def bars(axes: plt.Axes, modes: list[str], series: dict[str, list[float | None]], unit: str) -> None:
    """Draw grouped bars, one group per mode; a missing value gets a 'n/a' mark instead of a bar."""
    width = 0.8 / max(len(series), 1)
    for index, (name, values) in enumerate(series.items()):
        positions = [mode_index - 0.4 + width * (index + 0.5) for mode_index in range(len(modes))]
        heights = [value or 0.0 for value in values]
        drawn = axes.bar(positions, heights, width, label=name)
        labels = ["n/a" if value is None else f"{value:.3g}" for value in values]
        axes.bar_label(drawn, labels=labels, fontsize=8, padding=2)
    axes.set_xticks(range(len(modes)), modes)
    axes.set_ylabel(unit)
    axes.margins(y=0.15)
    if len(series) > 1:
        axes.legend(fontsize=8)


# ---- modes side by side --------------------------------------------------------------

def rank_bytes(cell: object) -> list[float]:
    """Split the table's 'checkpoint bytes by rank' cell ('123 / 456') into numbers."""
    if not isinstance(cell, str) or cell in ("", NOT_TRACED):
        return []
    return [float(part) for part in cell.split(" / ")]


def mode_values(summary: pd.DataFrame, views: dict[str, dict], checkpoints: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Collect the numbers of every modes figure from the table and the per-rank views."""
    rows = []
    for row in summary.itertuples():
        mode = row.mode
        for rank, written in enumerate(rank_bytes(row.checkpoint_bytes_by_rank)):
            rows.append(("checkpoint_bytes", mode, "bytes written", f"rank {rank}", written))
        rows.append(("checkpoint_bytes", mode, "bytes written", "total", number(row.bytes_written_checkpoint)))
        rows.append(("bandwidth", mode, "Darshan, slowest rank", "", number(row.bandwidth_by_slowest_mib_per_s)))
        rows.append(("bandwidth", mode, "training loop, while blocked", "", number(row.blocking_throughput_mib_per_s)))
        rows.append(("blocking", mode, "blocked per checkpoint", "", number(row.blocking_mean_s)))
        rows.append(("blocking", mode, "save complete after", "", number(row.completion_mean_s)))
        per_checkpoint = checkpoints.get(mode)
        has_files = per_checkpoint is not None and len(per_checkpoint)
        rows.append(("files", mode, "files per checkpoint", "", float(per_checkpoint["files"].mean()) if has_files else None))
        rows.append(("files", mode, "metadata operations per checkpoint", "",
                     float(per_checkpoint["metadata_ops"].mean()) if has_files else None))
        view = views.get(mode) or {}
        for series, key in (("write time hidden behind training", "hidden_share"),
                            ("lowest over Darshan's clock offset", "hidden_share_min"),
                            ("highest over Darshan's clock offset", "hidden_share_max")):
            rows.append(("hidden", mode, series, "", None if view.get(key) is None else 100 * view[key]))
    return pd.DataFrame(rows, columns=VALUE_COLUMNS)


def series_of(values: pd.DataFrame, figure: str, modes: list[str], category: str = "") -> dict[str, list[float | None]]:
    """Return each series of a figure as one value per mode, in the modes' order."""
    own = values[(values["figure"] == figure) & (values["category"] == category)]
    result = {}
    for series in dict.fromkeys(own["series"]):
        by_mode = own[own["series"] == series].set_index("mode")["value"]
        result[series] = [number(by_mode.get(mode)) for mode in modes]
    return result


def draw_checkpoint_bytes(values: pd.DataFrame, modes: list[str]) -> plt.Figure:
    """Stack each mode's checkpoint bytes by the rank that wrote them."""
    figure, axes = plt.subplots(figsize=(6, 4))
    own = values[(values["figure"] == "checkpoint_bytes") & values["category"].str.startswith("rank")]
    bottoms = [0.0] * len(modes)
    for category in sorted(own["category"].unique(), key=lambda text: int(text.split()[1])):
        by_mode = own[own["category"] == category].set_index("mode")["value"]
        heights = [(number(by_mode.get(mode)) or 0.0) / MIB for mode in modes]
        axes.bar(range(len(modes)), heights, 0.6, bottom=bottoms, label=category)
        bottoms = [bottom + height for bottom, height in zip(bottoms, heights)]
    totals = series_of(values, "checkpoint_bytes", modes, "total")["bytes written"]
    for index, total in enumerate(totals):
        axes.annotate("not traced" if total is None else f"{total / MIB:.1f} MiB", (index, bottoms[index]),
                      ha="center", va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
    axes.set_xticks(range(len(modes)), modes)
    axes.set_ylabel("checkpoint bytes written (MiB)")
    axes.set_title("Checkpoint bytes written, by rank (Darshan)")
    axes.margins(y=0.15)
    axes.legend(fontsize=8, title="written by", title_fontsize=8)
    return figure


def draw_mode_bars(values: pd.DataFrame, modes: list[str], figure_name: str, title: str, unit: str) -> plt.Figure:
    """Draw one modes figure as grouped bars of its series."""
    figure, axes = plt.subplots(figsize=(6, 4))
    bars(axes, modes, series_of(values, figure_name, modes), unit)
    axes.set_title(title)
    return figure


def draw_files(values: pd.DataFrame, modes: list[str]) -> plt.Figure:
    """Draw files and metadata operations per checkpoint, each on its own axes."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 4))
    series = series_of(values, "files", modes)
    bars(left, modes, {"files per checkpoint": series["files per checkpoint"]}, "files")
    left.set_title("Files per checkpoint")
    bars(right, modes, {"metadata operations": series["metadata operations per checkpoint"]}, "operations")
    right.set_title("Opens, stats and renames per checkpoint")
    return figure


def draw_hidden(values: pd.DataFrame, modes: list[str]) -> plt.Figure:
    """Draw the share of write time hidden behind training, with its range over Darshan's clock offset."""
    figure, axes = plt.subplots(figsize=(6, 4))
    series = series_of(values, "hidden", modes)
    shares = series["write time hidden behind training"]
    bars(axes, modes, {"hidden": shares}, "% of checkpoint write time")
    for index, (share, low, high) in enumerate(zip(shares, series["lowest over Darshan's clock offset"],
                                                   series["highest over Darshan's clock offset"])):
        if share is not None:
            axes.errorbar(index, share, yerr=[[share - low], [high - share]], color="black", capsize=4)
    axes.set_ylim(0, 110)
    axes.set_title("Checkpoint write time hidden behind training")
    return figure


def plot_modes(summary: pd.DataFrame, views: dict[str, dict], checkpoints: dict[str, pd.DataFrame],
               output_dir: Path) -> pd.DataFrame:
    """Draw every modes figure and return the plotted numbers."""
    modes = list(summary["mode"])
    values = mode_values(summary, views, checkpoints)
    save(draw_checkpoint_bytes(values, modes), output_dir, "modes_checkpoint_bytes")
    save(draw_mode_bars(values, modes, "bandwidth", "Checkpoint bandwidth", "MiB/s"), output_dir, "modes_bandwidth")
    save(draw_mode_bars(values, modes, "blocking", "Time per checkpoint (training job's timing)", "s"),
         output_dir, "modes_blocking")
    save(draw_files(values, modes), output_dir, "modes_files")
    save(draw_hidden(values, modes), output_dir, "modes_hidden")
    return values


# ---- one mode per rank --------------------------------------------------------------------

def timeline_rows(intervals: pd.DataFrame, per_rank: pd.DataFrame, max_ranks: int) -> list[tuple[int, str, int]]:
    """Choose the timeline's rows: (rank, role, pid) for each process of the ranks shown.

    With more ranks than ``max_ranks``, rank 0 and the ranks with the most
    checkpoint I/O time are shown, so a straggler is never left out.
    """
    ranks = list(per_rank["rank"].astype(int))
    if len(ranks) > max_ranks:
        slowest = per_rank.sort_values("checkpoint_io_time_s", ascending=False)["rank"].astype(int)
        ranks = sorted({0, *list(slowest[:max_ranks - 1])})
    rows = []
    ranked = intervals[intervals["rank"].notna()]
    for rank in ranks:
        processes = ranked[ranked["rank"] == rank][["role", "pid"]].drop_duplicates().sort_values("role", ascending=False)
        entries = [(rank, role, int(pid)) for role, pid in processes.itertuples(index=False)]
        rows.extend(entries or [(rank, "rank", -1)])
    return rows


def hidden_text(view: dict) -> str:
    """Describe the hidden share of a view with its range over Darshan's clock offset."""
    if view.get("hidden_share") is None:
        return "unknown (no timing of the saves)"
    return (f"{view['hidden_share']:.0%} ({view['hidden_share_min']:.0%} to {view['hidden_share_max']:.0%} "
            "within Darshan's clock offset)")


def draw_timeline(mode: str, intervals: pd.DataFrame, phases: pd.DataFrame, per_rank: pd.DataFrame,
                  view: dict, max_ranks: int) -> plt.Figure:
    """Draw each rank's checkpoint I/O over its training loop and the times a save blocked it."""
    origin_s = view["origin_unix_s"]
    rows = timeline_rows(intervals, per_rank, max_ranks)
    figure, axes = plt.subplots(figsize=(10, 1.2 + 0.6 * max(len(rows), 1)))
    for index, (rank, role, pid) in enumerate(rows):
        y = len(rows) - 1 - index
        own_phases = phases[phases["rank"] == rank]
        for kind, height, alpha in (("train_loop", 0.9, 0.15), ("blocked", 0.9, 0.35), ("final_wait", 0.9, 0.35)):
            spans = own_phases[own_phases["kind"] == kind]
            color = COLORS["blocked"] if kind == "final_wait" else COLORS[kind]
            axes.broken_barh(list(zip(spans["start_unix_s"] - origin_s, spans["end_unix_s"] - spans["start_unix_s"])),
                             (y - height / 2, height), color=color, alpha=alpha, linewidth=0)
        in_flight = own_phases[own_phases["kind"] == "in_flight"]
        axes.broken_barh(list(zip(in_flight["start_unix_s"] - origin_s, in_flight["end_unix_s"] - in_flight["start_unix_s"])),
                         (y + 0.32, 0.08), color=COLORS["in_flight"])
        own_io = intervals[intervals["pid"] == pid]
        for kind, height in (("open_close", 0.12), ("read", 0.35), ("write", 0.35)):
            spans = own_io[own_io["kind"] == kind]
            axes.broken_barh(list(zip(spans["start_unix_s"] - origin_s, spans["end_unix_s"] - spans["start_unix_s"])),
                             (y - height / 2, height), color=COLORS[kind])
    labels = [f"rank {rank}" + ("" if role == "rank" else f" {role.replace('_', ' ')}") for rank, role, _ in rows]
    axes.set_yticks(range(len(rows)), list(reversed(labels)))
    axes.set_xlabel(f"seconds since {view['origin_utc']}")
    ranks_shown = len({rank for rank, _, _ in rows})
    axes.set_title(f"{mode}: checkpoint I/O per rank against training ({ranks_shown} of {len(per_rank)} ranks)\n"
                   f"write time hidden behind training: {hidden_text(view)}", fontsize=10)
    focus = pd.concat([intervals[["start_unix_s", "end_unix_s"]], phases[["start_unix_s", "end_unix_s"]]])
    if len(focus):
        start, end = focus["start_unix_s"].min() - origin_s, focus["end_unix_s"].max() - origin_s
        axes.set_xlim(start - 0.02 * (end - start), end + 0.02 * (end - start))
    sources = sorted(set((view.get("write_interval_source") or {}).values())) or ["none"]
    legend = [Patch(color=COLORS["train_loop"], alpha=0.3, label="training loop"),
              Patch(color=COLORS["blocked"], alpha=0.5, label="training blocked by a save"),
              Patch(color=COLORS["in_flight"], label="asynchronous save in flight"),
              Patch(color=COLORS["open_close"], label="checkpoint file open to close"),
              Patch(color=COLORS["write"], label=f"writes ({', '.join(sources)})"),
              Patch(color=COLORS["read"], label="reads")]
    axes.legend(handles=legend, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    return figure


def draw_ranks(mode: str, per_rank: pd.DataFrame) -> plt.Figure:
    """Draw each rank's checkpoint bytes, its checkpoint I/O time and the training time its saves blocked.

    The I/O time is split into write calls, fsync and metadata, as Darshan
    counted it on the checkpoint files of the rank and its background writers.
    """
    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(13, 4))
    ranks = [f"rank {rank}" for rank in per_rank["rank"]]
    left.bar(ranks, per_rank["checkpoint_bytes_written"] / MIB, color=COLORS["write"])
    left.set_ylabel("checkpoint bytes written (MiB)")
    left.set_title(f"{mode}: checkpoint bytes per rank")

    data_s = per_rank["checkpoint_write_time_s"] - per_rank["checkpoint_fsync_time_s"]
    bottom = pd.Series(0.0, index=per_rank.index)
    for label, seconds, color in (("write calls", data_s, COLORS["write"]),
                                  ("fsync (estimated)", per_rank["checkpoint_fsync_time_s"], COLORS["fsync"]),
                                  ("metadata", per_rank["checkpoint_meta_time_s"], COLORS["meta"])):
        middle.bar(ranks, seconds, bottom=bottom, label=label, color=color)
        bottom = bottom + seconds
    middle.set_ylabel("seconds (Darshan, checkpoint files)")
    middle.set_title(f"{mode}: checkpoint I/O time per rank")
    middle.legend(fontsize=8)

    right.bar(ranks, per_rank["blocked_s"], color=COLORS["blocked"])
    right.set_ylabel("seconds (training job's timing)")
    right.set_title(f"{mode}: training blocked by saves")
    figure.tight_layout()
    return figure


def draw_write_sizes(mode: str, write_sizes: pd.DataFrame) -> plt.Figure:
    """Draw the number of checkpoint writes per POSIX_SIZE_WRITE_* bin, with the 1 MiB small-write limit."""
    figure, axes = plt.subplots(figsize=(8, 4))
    counts = write_sizes.groupby("bin", sort=False)["writes"].sum()
    labels = [name.removeprefix("POSIX_SIZE_WRITE_") for name in counts.index]
    small = [upper <= MIB for upper in write_sizes.drop_duplicates("bin")["upper_bytes"]]
    colors = [COLORS["read"] if is_small else COLORS["write"] for is_small in small]
    axes.bar(labels, counts.values, color=colors)
    axes.set_xlabel("write size (bytes, Darshan bins); orange: up to 1 MiB")
    axes.set_ylabel("checkpoint writes")
    axes.set_title(f"{mode}: checkpoint write sizes")
    axes.tick_params(axis="x", labelrotation=45)
    return figure


def rank_values(mode: str, per_rank: pd.DataFrame, write_sizes: pd.DataFrame) -> pd.DataFrame:
    """Collect the numbers of one mode's rank figures."""
    rows = []
    for row in per_rank.itertuples():
        category = f"rank {row.rank}"
        rows.append(("ranks", mode, "checkpoint_bytes_written", category, row.checkpoint_bytes_written))
        rows.append(("ranks", mode, "checkpoint_write_time_s", category, row.checkpoint_write_time_s))
        rows.append(("ranks", mode, "checkpoint_fsync_time_s", category, row.checkpoint_fsync_time_s))
        rows.append(("ranks", mode, "checkpoint_meta_time_s", category, row.checkpoint_meta_time_s))
        rows.append(("timeline", mode, "write_busy_s", category, row.write_busy_s))
        rows.append(("timeline", mode, "blocked_s", category, row.blocked_s))
        rows.append(("timeline", mode, "hidden_share", category, row.hidden_share))
    for name, writes in write_sizes.groupby("bin", sort=False)["writes"].sum().items():
        rows.append(("write_sizes", mode, "writes", name, float(writes)))
    return pd.DataFrame(rows, columns=VALUE_COLUMNS)


def read_rank_dir(rank_dir: Path) -> tuple[dict, pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Read the files rank_view.py wrote for one mode."""
    return (json.loads((rank_dir / "rank_view.json").read_text()),
            pd.read_csv(rank_dir / "per_rank.csv"),
            pd.read_csv(rank_dir / "intervals.csv"),
            pd.read_csv(rank_dir / "phases.csv"),
            pd.read_csv(rank_dir / "write_sizes.csv"))


def plot_ranks(mode: str, rank_dir: Path, output_dir: Path, max_ranks: int) -> pd.DataFrame:
    """Draw one mode's rank figures and return the plotted numbers."""
    view, per_rank, intervals, phases, write_sizes = read_rank_dir(rank_dir)
    save(draw_timeline(mode, intervals, phases, per_rank, view, max_ranks), output_dir, f"{mode}_timeline")
    save(draw_ranks(mode, per_rank), output_dir, f"{mode}_ranks")
    save(draw_write_sizes(mode, write_sizes), output_dir, f"{mode}_write_sizes")
    return rank_values(mode, per_rank, write_sizes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    modes = commands.add_parser("modes", help="figures with a bar per mode")
    modes.add_argument("--summary", type=Path, required=True, help="summary.csv from summary_table.py")
    modes.add_argument("--rank-views", type=Path, nargs="+", required=True,
                       help="rank_view.json of each mode; per_checkpoint.csv is read beside it")
    ranks = commands.add_parser("ranks", help="one mode's figures per rank")
    ranks.add_argument("--mode", required=True)
    ranks.add_argument("--rank-dir", type=Path, required=True, help="the mode's rank_view.py output directory")
    ranks.add_argument("--max-ranks", type=int, default=16, help="most ranks drawn in the timeline")
    for command in (modes, ranks):
        command.add_argument("--output-dir", type=Path, required=True, help="directory for the PNG and SVG files")
        command.add_argument("--values", type=Path, required=True, help="CSV file of the plotted numbers")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    if args.command == "modes":
        summary = pd.read_csv(args.summary)
        views = {}
        checkpoints = {}
        for path in args.rank_views:
            view = json.loads(path.read_text())
            views[view["mode"]] = view
            checkpoints[view["mode"]] = pd.read_csv(path.parent / "per_checkpoint.csv")
        values = plot_modes(summary, views, checkpoints, args.output_dir)
    else:
        if args.max_ranks < 1:
            parser.error(f"--max-ranks must be at least 1, not {args.max_ranks}")
        values = plot_ranks(args.mode, args.rank_dir, args.output_dir, args.max_ranks)
    args.values.parent.mkdir(parents=True, exist_ok=True)
    values.to_csv(args.values, index=False)
    log.info("wrote %s figures and %s", args.command, args.values)
    return 0


if __name__ == "__main__":
    sys.exit(main())
