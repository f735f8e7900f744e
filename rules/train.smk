"""Stage 1: one training job per checkpoint mode, traced by Darshan when available."""


rule train:
    output:
        manifest=str(RESULTS / "{mode}" / "train" / "manifest.json"),
    log:
        str(LOGS / "{mode}" / "train.log"),
    benchmark:
        str(LOGS / "{mode}" / "train.benchmark.tsv")
    params:
        settings=lambda wildcards: json.dumps(training_settings(wildcards.mode)),
        output_dir=lambda wildcards: str(train_dir(wildcards.mode)),
    threads: RANKS
    resources:
        nodes=config["launch"]["nodes"],
        tasks=RANKS,
        tasks_per_node=config["launch"]["ranks_per_node"],
        # The local profile offers one slot, so training jobs never overlap there.
        training_slots=1,
    shell:
        f"{PYTHON} {script('run_training.py')}"
        " --mode {wildcards.mode} --settings {params.settings:q} --output-dir {params.output_dir:q}"
        " > {log:q} 2>&1"
