"""Stage 1b: the checkpoint file system's own bandwidth, the limit each mode is judged against."""


rule storage_baseline:
    input:
        manifests=lambda wildcards: [str(manifest_path(mode)) for mode in RUN_MODES],
    output:
        baseline=str(RESULTS / "baseline" / "baseline.json"),
    conda:
        CONDA_ENV
    log:
        str(LOGS / "baseline" / "storage_baseline.log"),
    benchmark:
        str(LOGS / "baseline" / "storage_baseline.benchmark.tsv")
    params:
        settings=lambda wildcards: json.dumps(training_settings("baseline")),
        manifests=lambda wildcards, input: quote_arguments(
            argument for path in input.manifests for argument in ("--manifest", path)
        ),
        repeats=config["baseline"]["repeats"],
        block_bytes=config["baseline"]["block_bytes"],
    threads: RANKS
    resources:
        **RANK_JOB_RESOURCES,
    envmodules:
        *config["launch"].get("envmodules", []),
    shell:
        f"{PYTHON} {script('storage_baseline.py')}"
        " --settings {params.settings:q} {params.manifests} --repeats {params.repeats}"
        " --block-bytes {params.block_bytes} --output {output.baseline:q} > {log:q} 2>&1"
