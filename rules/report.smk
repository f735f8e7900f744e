"""Stage 3: every mode in one comparison table, each mode per rank, plots, insights and the report.

`snakemake --report report.html` gathers the outputs marked with report() below
into one self-contained file, with the captions in workflow/report/.
"""


report: "../workflow/report/workflow.rst"


PLOTS = RESULTS / "plots"
# Figure names as plots.py writes them: PLOTS/modes_<name>.png and PLOTS/<mode>_<name>.png, each also as .svg.
MODE_FIGURES = ["checkpoint_bytes", "bandwidth", "blocking", "files", "hidden"]
RANK_FIGURES = ["timeline", "ranks", "write_sizes"]

# What rule all builds from this stage, besides the table (see final_outputs in common.smk).
REPORT_TARGETS = (
    [str(RESULTS / name) for name in ("insights.md", "insights.json", "insights.html")]
    + [str(PLOTS / f"modes_{name}.{ext}") for name in MODE_FIGURES for ext in ("png", "svg")]
    + [str(PLOTS / f"{mode}_{name}.{ext}") for mode in MODES for name in RANK_FIGURES for ext in ("png", "svg")]
    + ([str(RESULTS / mode / "report" / "summaries") for mode in MODES] if config["summaries"]["html"] != "none" else [])
)


rule summary_table:
    input:
        metrics=[str(metrics_path(mode)) for mode in MODES],
        summaries=lambda wildcards: [html for mode in MODES for html in summary_html_of(mode)],
        baseline=baseline_inputs(),
    output:
        csv=report(
            str(RESULTS / "summary.csv"),
            caption="../workflow/report/summary_table.rst",
            category="1. Comparison table",
        ),
        markdown=str(RESULTS / "summary.md"),
    conda:
        CONDA_ENV
    log:
        str(LOGS / "summary_table.log"),
    params:
        baseline=lambda wildcards, input: quote_arguments(["--baseline", *input.baseline] if input.baseline else []),
    shell:
        f"{PYTHON} {script('summary_table.py')}"
        " --metrics {input.metrics:q} {params.baseline} --csv {output.csv:q} --markdown {output.markdown:q}"
        " > {log:q} 2>&1"


rule rank_view:
    input:
        processes=str(RESULTS / "{mode}" / "darshan" / "processes.csv"),
        info=str(RESULTS / "{mode}" / "darshan" / "locate.json"),
        logs=str(RESULTS / "{mode}" / "darshan" / "logs"),
    output:
        view=str(RESULTS / "{mode}" / "ranks" / "rank_view.json"),
        per_rank=str(RESULTS / "{mode}" / "ranks" / "per_rank.csv"),
        intervals=str(RESULTS / "{mode}" / "ranks" / "intervals.csv"),
        phases=str(RESULTS / "{mode}" / "ranks" / "phases.csv"),
        per_checkpoint=str(RESULTS / "{mode}" / "ranks" / "per_checkpoint.csv"),
        write_sizes=str(RESULTS / "{mode}" / "ranks" / "write_sizes.csv"),
    conda:
        CONDA_ENV
    log:
        str(LOGS / "{mode}" / "rank_view.log"),
    benchmark:
        str(LOGS / "{mode}" / "rank_view.benchmark.tsv")
    params:
        manifest=lambda wildcards: quote_arguments(metrics_manifest_arguments(wildcards)),
        output_dir=lambda wildcards, output: os.path.dirname(output.view),
    shell:
        f"{PYTHON} {script('rank_view.py')}"
        " --mode {wildcards.mode} --processes {input.processes:q} --info {input.info:q}"
        " --logs-dir {input.logs:q} {params.manifest} --output-dir {params.output_dir:q} > {log:q} 2>&1"


rule plot_ranks:
    input:
        view=str(RESULTS / "{mode}" / "ranks" / "rank_view.json"),
        tables=[str(RESULTS / "{mode}" / "ranks" / f"{name}.csv")
                for name in ("per_rank", "intervals", "phases", "write_sizes")],
    output:
        timeline=report(
            str(PLOTS / "{mode}_timeline.png"),
            caption="../workflow/report/timeline.rst",
            category="4. Per rank",
            subcategory="{mode}",
            labels={"mode": "{mode}", "figure": "I/O timeline"},
        ),
        ranks=report(
            str(PLOTS / "{mode}_ranks.png"),
            caption="../workflow/report/ranks.rst",
            category="4. Per rank",
            subcategory="{mode}",
            labels={"mode": "{mode}", "figure": "bytes and time per rank"},
        ),
        write_sizes=report(
            str(PLOTS / "{mode}_write_sizes.png"),
            caption="../workflow/report/write_sizes.rst",
            category="4. Per rank",
            subcategory="{mode}",
            labels={"mode": "{mode}", "figure": "write sizes"},
        ),
        svg=expand(str(PLOTS / "{{mode}}_{name}.svg"), name=RANK_FIGURES),
        values=str(PLOTS / "{mode}_values.csv"),
    conda:
        CONDA_ENV
    log:
        str(LOGS / "{mode}" / "plot_ranks.log"),
    benchmark:
        str(LOGS / "{mode}" / "plot_ranks.benchmark.tsv")
    params:
        rank_dir=lambda wildcards, input: os.path.dirname(input.view),
        output_dir=lambda wildcards, output: os.path.dirname(output.values),
    shell:
        f"{PYTHON} {script('plots.py')} ranks"
        " --mode {wildcards.mode} --rank-dir {params.rank_dir:q}"
        " --output-dir {params.output_dir:q} --values {output.values:q} > {log:q} 2>&1"


rule plot_modes:
    input:
        summary=str(RESULTS / "summary.csv"),
        views=[str(RESULTS / mode / "ranks" / "rank_view.json") for mode in MODES],
        per_checkpoint=[str(RESULTS / mode / "ranks" / "per_checkpoint.csv") for mode in MODES],
    output:
        checkpoint_bytes=report(
            str(PLOTS / "modes_checkpoint_bytes.png"),
            caption="../workflow/report/modes_checkpoint_bytes.rst",
            category="3. Modes compared",
        ),
        bandwidth=report(
            str(PLOTS / "modes_bandwidth.png"),
            caption="../workflow/report/modes_bandwidth.rst",
            category="3. Modes compared",
        ),
        blocking=report(
            str(PLOTS / "modes_blocking.png"),
            caption="../workflow/report/modes_blocking.rst",
            category="3. Modes compared",
        ),
        files=report(
            str(PLOTS / "modes_files.png"),
            caption="../workflow/report/modes_files.rst",
            category="3. Modes compared",
        ),
        hidden=report(
            str(PLOTS / "modes_hidden.png"),
            caption="../workflow/report/modes_hidden.rst",
            category="3. Modes compared",
        ),
        svg=[str(PLOTS / f"modes_{name}.svg") for name in MODE_FIGURES],
        values=str(PLOTS / "modes_values.csv"),
    conda:
        CONDA_ENV
    log:
        str(LOGS / "plot_modes.log"),
    benchmark:
        str(LOGS / "plot_modes.benchmark.tsv")
    params:
        output_dir=lambda wildcards, output: os.path.dirname(output.values),
    shell:
        f"{PYTHON} {script('plots.py')} modes"
        " --summary {input.summary:q} --rank-views {input.views:q}"
        " --output-dir {params.output_dir:q} --values {output.values:q} > {log:q} 2>&1"


rule insights:
    input:
        summary=str(RESULTS / "summary.csv"),
        metrics=[str(metrics_path(mode)) for mode in MODES],
        views=[str(RESULTS / mode / "ranks" / "rank_view.json") for mode in MODES],
        tables=[str(RESULTS / mode / "ranks" / f"{name}.csv") for mode in MODES
                for name in ("per_rank", "per_checkpoint")],
        # The HTML page embeds the figure of each insight.
        figures=[str(PLOTS / f"modes_{name}.png") for name in MODE_FIGURES]
        + [str(PLOTS / f"{mode}_{name}.png") for mode in MODES for name in RANK_FIGURES],
    output:
        markdown=str(RESULTS / "insights.md"),
        json=str(RESULTS / "insights.json"),
        html=report(
            str(RESULTS / "insights.html"),
            caption="../workflow/report/insights.rst",
            category="2. Insights",
        ),
    conda:
        CONDA_ENV
    log:
        str(LOGS / "insights.log"),
    params:
        max_records=config["darshan"]["max_records"],
    shell:
        f"{PYTHON} {script('insights.py')}"
        " --metrics {input.metrics:q} --rank-views {input.views:q} --summary {input.summary:q}"
        " --max-records {params.max_records} --markdown {output.markdown:q} --json {output.json:q}"
        " --html {output.html:q} > {log:q} 2>&1"


# The report embeds only outputs marked with report(), so each mode's Darshan summaries are
# linked (hard links, no copies) into a directory of this stage.
rule report_log_summaries:
    input:
        lambda wildcards: summary_html_of(wildcards.mode),
    output:
        report(
            directory(str(RESULTS / "{mode}" / "report" / "summaries")),
            patterns=["{name}.html"],
            caption="../workflow/report/log_summary.rst",
            category="5. Darshan summary per log",
            subcategory="{mode}",
        ),
    conda:
        CONDA_ENV
    log:
        str(LOGS / "{mode}" / "report_log_summaries.log"),
    shell:
        "(mkdir -p {output:q} && for summary in {input:q}; do"
        ' ln -f "$summary" {output:q}/ || cp -f "$summary" {output:q}/; done) > {log:q} 2>&1'
