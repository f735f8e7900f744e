"""Stage 2: find each job's Darshan logs, name their processes, summarise and measure them."""


checkpoint locate_logs:
    input:
        unpack(locate_input),
    output:
        processes=str(RESULTS / "{mode}" / "darshan" / "processes.csv"),
        info=str(RESULTS / "{mode}" / "darshan" / "locate.json"),
        logs=directory(str(RESULTS / "{mode}" / "darshan" / "logs")),
    conda:
        CONDA_ENV
    log:
        str(LOGS / "{mode}" / "locate_logs.log"),
    params:
        arguments=lambda wildcards: quote_arguments(locate_arguments(wildcards)),
    shell:
        f"{PYTHON} {script('locate_logs.py')}"
        " {params.arguments} --output-dir {output.logs:q} --processes {output.processes:q}"
        " --info {output.info:q} > {log:q} 2>&1"


rule darshan_summary:
    input:
        str(RESULTS / "{mode}" / "darshan" / "logs" / "{log}.darshan"),
    output:
        str(RESULTS / "{mode}" / "darshan" / "summaries" / "{log}.html"),
    conda:
        CONDA_ENV
    log:
        str(LOGS / "{mode}" / "summaries" / "{log}.log"),
    benchmark:
        str(LOGS / "{mode}" / "summaries" / "{log}.benchmark.tsv")
    shell:
        f"{PYTHON} -m darshan summary {{input:q}} --output {{output:q}} > {{log:q}} 2>&1"


rule darshan_metrics:
    input:
        processes=str(RESULTS / "{mode}" / "darshan" / "processes.csv"),
        info=str(RESULTS / "{mode}" / "darshan" / "locate.json"),
        logs=str(RESULTS / "{mode}" / "darshan" / "logs"),
    output:
        metrics=str(RESULTS / "{mode}" / "metrics" / "metrics.json"),
        per_process=str(RESULTS / "{mode}" / "metrics" / "per_process.csv"),
    conda:
        CONDA_ENV
    log:
        str(LOGS / "{mode}" / "darshan_metrics.log"),
    benchmark:
        str(LOGS / "{mode}" / "darshan_metrics.benchmark.tsv")
    params:
        manifest=lambda wildcards: quote_arguments(metrics_manifest_arguments(wildcards)),
    shell:
        f"{PYTHON} {script('darshan_metrics.py')}"
        " --mode {wildcards.mode} --processes {input.processes:q} --info {input.info:q}"
        " --logs-dir {input.logs:q} {params.manifest}"
        " --output {output.metrics:q} --per-process {output.per_process:q} > {log:q} 2>&1"


rule redact:
    input:
        text=shared_text_files(),
        logs=[str(darshan_dir(mode) / "logs") for mode in MODES],
    output:
        directory(str(RESULTS / "shared")),
    conda:
        CONDA_ENV
    log:
        str(LOGS / "redact.log"),
    params:
        results=lambda wildcards, output: os.path.dirname(output[0]),
        terms=quote_arguments(
            [argument for user in config["redact"]["users"] for argument in ("--user", user)]
            + [argument for path in config["redact"]["paths"] for argument in ("--path", path)]
        ),
        logs=lambda wildcards, input: quote_arguments(argument for path in input.logs for argument in ("--logs-dir", path)),
    shell:
        f"{PYTHON} {script('redact.py')}"
        " --results-dir {params.results:q} --output-dir {output:q} --text {input.text:q} {params.logs}"
        " {params.terms} > {log:q} 2>&1"
