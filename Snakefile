"""Checkpoint I/O workflow: train with checkpoints under Darshan, then compare the modes.

Stages: train (one job per checkpoint mode) -> locate the job's Darshan logs ->
per-log HTML summaries and per-mode metrics -> one comparison table.
"""

from pathlib import Path


configfile: str(Path(workflow.basedir) / "config" / "config.yaml")


include: "rules/common.smk"
include: "rules/train.smk"
include: "rules/baseline.smk"
include: "rules/darshan.smk"
include: "rules/report.smk"
include: "rules/sweep.smk"


# Only the training jobs and the storage baseline go to a cluster; the analysis
# rules are short and run where Snakemake runs.
localrules:
    all,
    locate_logs,
    darshan_summary,
    darshan_metrics,
    redact,
    summary_table,
    rank_view,
    plot_ranks,
    plot_modes,
    insights,
    report_log_summaries,
    sweep_locate_logs,
    sweep_darshan_metrics,
    sweep_table,
    sweep_plot,


rule all:
    input:
        final_outputs(),
    default_target: True


onstart:
    check_local_launch()


onsuccess:
    table = SWEEP_DIR / "sweep.md" if SWEEP else RESULTS / "summary.md"
    if table.is_file():
        title = "Checkpoint I/O by mode and sweep point" if SWEEP else "Checkpoint I/O by mode"
        print(f"\n{title} ({table}):\n")
        print(table.read_text())
    build_report()
