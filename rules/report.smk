"""Stage 3: every mode in one comparison table."""


rule summary_table:
    input:
        metrics=[str(metrics_path(mode)) for mode in MODES],
        summaries=lambda wildcards: [html for mode in MODES for html in summary_html_of(mode)],
    output:
        csv=str(RESULTS / "summary.csv"),
        markdown=str(RESULTS / "summary.md"),
    conda:
        CONDA_ENV
    log:
        str(LOGS / "summary_table.log"),
    shell:
        f"{PYTHON} {script('summary_table.py')}"
        " --metrics {input.metrics:q} --csv {output.csv:q} --markdown {output.markdown:q} > {log:q} 2>&1"
