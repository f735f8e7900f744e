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
        # Slurm (snakemake-executor-plugin-slurm): one task per rank and, with cuda, one
        # GPU per rank (sbatch --gpus is a total). tasks_per_gpu=0 leaves --ntasks-per-gpu
        # out. With mpi the plugin runs run_training.py in the batch script, so its srun
        # starts the only step. The plugin rejects mpi for one task, so a one-rank job
        # runs inside the plugin's srun step and run_training.py passes srun --overlap.
        nodes=config["launch"]["nodes"],
        tasks=RANKS,
        cpus_per_task=1,
        gpu=RANKS if config["launch"]["device"] == "cuda" else 0,
        tasks_per_gpu=0,
        **({"mpi": "srun"} if RANKS > 1 else {}),
        # The local profile offers one slot, so training jobs never overlap there.
        training_slots=1,
    envmodules:
        *config["launch"].get("envmodules", []),
    shell:
        f"{PYTHON} {script('run_training.py')}"
        " --mode {wildcards.mode} --settings {params.settings:q} --output-dir {params.output_dir:q}"
        " > {log:q} 2>&1"
