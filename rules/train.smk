"""Stage 1: one training job per checkpoint mode, traced by Darshan when available."""


rule train:
    output:
        manifest=str(RESULTS / "{mode}" / "train" / "manifest.json"),
    conda:
        CONDA_ENV
    log:
        str(LOGS / "{mode}" / "train.log"),
    benchmark:
        str(LOGS / "{mode}" / "train.benchmark.tsv")
    params:
        settings=lambda wildcards: json.dumps(training_settings(wildcards.mode)),
        output_dir=lambda wildcards: str(train_dir(wildcards.mode)),
    threads: RANKS
    resources:
        **RANK_JOB_RESOURCES,
    envmodules:
        *config["launch"].get("envmodules", []),
    shell:
        f"{PYTHON} {script('run_training.py')}"
        " --mode {wildcards.mode} --settings {params.settings:q} --output-dir {params.output_dir:q} --cores {threads}"
        " > {log:q} 2>&1"
