"""Sweep: every mode at every point of nodes x ranks per node x model, sweep.repeats times.

Each run goes through the same scripts as the single run (train, storage baseline,
locate logs, metrics) in results/sweep/<point>/<repeat>/<mode>/; the last two rules
reduce all runs to one table with the median and spread of each point and mode,
and a plot of bandwidth and blocking time against ranks and checkpoint size.
"""


SWEEP_PLOTS = SWEEP_DIR / "plots"
SWEEP_TARGETS = [str(SWEEP_DIR / name) for name in ("sweep_runs.csv", "sweep.csv", "sweep.md")] + [
    str(SWEEP_PLOTS / f"sweep.{ext}") for ext in ("png", "svg")
]


rule sweep_train:
    output:
        manifest=str(Path(SWEEP_RUN) / "train" / "manifest.json"),
    conda:
        CONDA_ENV
    log:
        str(Path(SWEEP_LOGS) / "train.log"),
    benchmark:
        str(Path(SWEEP_LOGS) / "train.benchmark.tsv")
    params:
        settings=lambda wildcards: json.dumps(sweep_training_settings(wildcards.point, wildcards.repeat, wildcards.mode)),
        output_dir=lambda wildcards, output: os.path.dirname(output.manifest),
    threads: lambda wildcards: SWEEP_POINTS[wildcards.point].ranks
    resources:
        **{name: sweep_resource(name) for name in ("nodes", "tasks", "gpu", "mpi")},
        cpus_per_task=1,
        tasks_per_gpu=0,
        training_slots=1,
    envmodules:
        *config["launch"].get("envmodules", []),
    shell:
        f"{PYTHON} {script('run_training.py')}"
        " --mode {wildcards.mode} --settings {params.settings:q} --output-dir {params.output_dir:q} --cores {threads}"
        " > {log:q} 2>&1"


rule sweep_storage_baseline:
    input:
        manifests=lambda wildcards: [str(sweep_run_dir(wildcards.point, wildcards.repeat, mode) / "train" / "manifest.json")
                                     for mode in MODES],
    output:
        baseline=str(SWEEP_DIR / "{point}" / "{repeat}" / "baseline" / "baseline.json"),
    conda:
        CONDA_ENV
    log:
        str(LOGS / "sweep" / "{point}" / "{repeat}" / "baseline" / "storage_baseline.log"),
    benchmark:
        str(LOGS / "sweep" / "{point}" / "{repeat}" / "baseline" / "storage_baseline.benchmark.tsv")
    params:
        settings=lambda wildcards: json.dumps(sweep_training_settings(wildcards.point, wildcards.repeat, "baseline")),
        manifests=lambda wildcards, input: quote_arguments(
            argument for path in input.manifests for argument in ("--manifest", path)
        ),
        repeats=config["baseline"]["repeats"],
        block_bytes=config["baseline"]["block_bytes"],
    threads: lambda wildcards: SWEEP_POINTS[wildcards.point].ranks
    resources:
        **{name: sweep_resource(name) for name in ("nodes", "tasks", "gpu", "mpi")},
        cpus_per_task=1,
        tasks_per_gpu=0,
        training_slots=1,
    envmodules:
        *config["launch"].get("envmodules", []),
    shell:
        f"{PYTHON} {script('storage_baseline.py')}"
        " --settings {params.settings:q} {params.manifests} --repeats {params.repeats}"
        " --block-bytes {params.block_bytes} --output {output.baseline:q} > {log:q} 2>&1"


rule sweep_locate_logs:
    input:
        manifest=str(Path(SWEEP_RUN) / "train" / "manifest.json"),
    output:
        processes=str(Path(SWEEP_RUN) / "darshan" / "processes.csv"),
        info=str(Path(SWEEP_RUN) / "darshan" / "locate.json"),
        logs=directory(str(Path(SWEEP_RUN) / "darshan" / "logs")),
    conda:
        CONDA_ENV
    log:
        str(Path(SWEEP_LOGS) / "locate_logs.log"),
    params:
        arguments=lambda wildcards, input: quote_arguments(run_locate_arguments(wildcards.mode, input.manifest)),
    shell:
        f"{PYTHON} {script('locate_logs.py')}"
        " {params.arguments} --output-dir {output.logs:q} --processes {output.processes:q}"
        " --info {output.info:q} > {log:q} 2>&1"


rule sweep_darshan_metrics:
    input:
        manifest=str(Path(SWEEP_RUN) / "train" / "manifest.json"),
        processes=str(Path(SWEEP_RUN) / "darshan" / "processes.csv"),
        info=str(Path(SWEEP_RUN) / "darshan" / "locate.json"),
        logs=str(Path(SWEEP_RUN) / "darshan" / "logs"),
    output:
        metrics=str(Path(SWEEP_RUN) / "metrics" / "metrics.json"),
        per_process=str(Path(SWEEP_RUN) / "metrics" / "per_process.csv"),
    conda:
        CONDA_ENV
    log:
        str(Path(SWEEP_LOGS) / "darshan_metrics.log"),
    benchmark:
        str(Path(SWEEP_LOGS) / "darshan_metrics.benchmark.tsv")
    shell:
        f"{PYTHON} {script('darshan_metrics.py')}"
        " --mode {wildcards.mode} --processes {input.processes:q} --info {input.info:q}"
        " --logs-dir {input.logs:q} --manifest {input.manifest:q}"
        " --output {output.metrics:q} --per-process {output.per_process:q} > {log:q} 2>&1"


rule sweep_table:
    input:
        metrics=[str(sweep_run_dir(*run) / "metrics" / "metrics.json") for run in sweep_runs()],
        manifests=[str(sweep_run_dir(*run) / "train" / "manifest.json") for run in sweep_runs()],
        baselines=[path for point in SWEEP_POINTS for repeat in SWEEP_REPEATS
                   for path in sweep_baseline_inputs(point, repeat)],
    output:
        runs=str(SWEEP_DIR / "sweep_runs.csv"),
        csv=report(
            str(SWEEP_DIR / "sweep.csv"),
            caption="../workflow/report/sweep_table.rst",
            category="6. Sweep",
        ),
        markdown=str(SWEEP_DIR / "sweep.md"),
    conda:
        CONDA_ENV
    log:
        str(LOGS / "sweep" / "sweep_table.log"),
    params:
        sweep_dir=lambda wildcards, output: os.path.dirname(output.csv),
        runs=quote_arguments("/".join(run) for run in sweep_runs()),
        baseline="" if config["baseline"]["enabled"] else "--no-baseline",
    shell:
        f"{PYTHON} {script('sweep_table.py')}"
        " --sweep-dir {params.sweep_dir:q} --runs {params.runs} {params.baseline} --runs-csv {output.runs:q}"
        " --csv {output.csv:q} --markdown {output.markdown:q} > {log:q} 2>&1"


rule sweep_plot:
    input:
        summary=str(SWEEP_DIR / "sweep.csv"),
    output:
        png=report(
            str(SWEEP_PLOTS / "sweep.png"),
            caption="../workflow/report/sweep_plot.rst",
            category="6. Sweep",
        ),
        svg=str(SWEEP_PLOTS / "sweep.svg"),
        values=str(SWEEP_PLOTS / "sweep_values.csv"),
    conda:
        CONDA_ENV
    log:
        str(LOGS / "sweep" / "sweep_plot.log"),
    benchmark:
        str(LOGS / "sweep" / "sweep_plot.benchmark.tsv")
    params:
        output_dir=lambda wildcards, output: os.path.dirname(output.values),
    shell:
        f"{PYTHON} {script('sweep_plot.py')}"
        " --summary {input.summary:q} --output-dir {params.output_dir:q}"
        " --values {output.values:q} > {log:q} 2>&1"
