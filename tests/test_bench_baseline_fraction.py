"""The helpers of benchmarks/bench_baseline_fraction.py, on the real Darshan logs in tests/data, and the save timings it reads."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import socket
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.distributed as dist

import darshan_metrics
import locate_logs
import summary_table
import train_checkpoint
from conftest import DATA, REPOSITORY, manifest_for

sys.path.insert(0, str(REPOSITORY / "benchmarks"))
import bench_baseline_fraction as bench  # noqa: E402

# Margins around each rank's data file in the rank records built below.
BEFORE_OPEN_S = 0.05
AFTER_FSYNC_S = 0.02
STATE_DICT_S = 0.01
SAVE_CALL_S = 0.015


def utc(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, tz=dt.timezone.utc).isoformat().replace("+00:00", "Z")


def results_dir_for(job: str, root: Path) -> Path:
    """Lay out a job of tests/data as the workflow's results/<job>/darshan/ and return the results directory."""
    darshan_dir = root / "results" / job / "darshan"
    darshan_dir.mkdir(parents=True)
    found, info = locate_logs.locate(job, None, DATA / job / "logs", None, [], 0)
    locate_logs.process_table(found, info["checkpoint_dir"]).to_csv(darshan_dir / "processes.csv", index=False)
    (darshan_dir / "locate.json").write_text(json.dumps(info, default=str))
    shutil.copytree(DATA / job / "logs", darshan_dir / "logs")
    return root / "results"


@pytest.fixture(scope="module")
def job_files(tmp_path_factory) -> dict[str, pd.DataFrame]:
    """Return the checkpoint file records of the dcp and torch_save jobs of tests/data, read as the benchmark reads them."""
    root = tmp_path_factory.mktemp("results")
    return {job: bench.checkpoint_files(results_dir_for(job, root), job) for job in ("dcp", "torch_save")}


def records_around(files: pd.DataFrame, stagger_s: float = 0.0) -> dict[int, dict]:
    """Build rank records whose saves start BEFORE_OPEN_S before each rank's data file opens and end AFTER_FSYNC_S after its fsync.

    Rank r starts ``r * stagger_s`` earlier than that, so the ranks reach each save at different times.
    """
    records = {}
    for rank in (0, 1):
        saves = []
        for step, checkpoint in enumerate(sorted(files["checkpoint"].unique()), start=1):
            own = files[(files["rank"] == rank) & (files["checkpoint"] == checkpoint) & (files["BYTES_WRITTEN"] > 0)]
            if own.empty:
                start_s = files.loc[files["checkpoint"] == checkpoint, "OPEN_START_unix_s"].min() - BEFORE_OPEN_S
                end_s = start_s + 1.0
            else:
                data = own.loc[own["BYTES_WRITTEN"].idxmax()]
                start_s = data["OPEN_START_unix_s"] - BEFORE_OPEN_S - rank * stagger_s
                end_s = data["WRITE_END_unix_s"] + data["fsync_time_s"] + AFTER_FSYNC_S
            saves.append({"step": step, "path": checkpoint, "start_utc": utc(start_s), "end_utc": utc(end_s),
                          "state_dict_s": STATE_DICT_S, "save_call_s": SAVE_CALL_S})
        records[rank] = {"rank": rank, "checkpoints": saves}
    return records


# ---- parts of a save from the real logs ---------------------------------------------------

def test_checkpoint_files_read_every_rank(job_files):
    files = job_files["dcp"]

    assert sorted(files["rank"].dropna().unique()) == [0, 1]
    assert sorted(files["checkpoint"].unique()) == ["step_0", "step_1", "step_2"]
    for column in ("OPEN_START_unix_s", "WRITE_END_unix_s", "F_WRITE_TIME", "fsync_time_s", "F_META_TIME"):
        assert column in files.columns, column


def test_save_phases_add_up_to_save_time(job_files):
    phases = bench.save_phases(job_files["dcp"], records_around(job_files["dcp"]), asynchronous=False)
    parts = phases[bench.PHASE_COLUMNS].sum(axis=1)

    assert len(phases) == 6
    assert (parts - phases["save_s"]).abs().max() < 1e-3


def test_save_phases_margins_and_data_file(job_files):
    phases = bench.save_phases(job_files["dcp"], records_around(job_files["dcp"]), asynchronous=False)

    for row in phases.itertuples():
        assert row.data_file == f"__{row.rank}_0.distcp"
        assert row.state_dict_s == pytest.approx(STATE_DICT_S)
        assert row.staging_s == 0.0
        assert row.until_open_s == pytest.approx(BEFORE_OPEN_S - STATE_DICT_S, abs=1e-3)
        assert row.after_fsync_s == pytest.approx(AFTER_FSYNC_S, abs=1e-3)
        assert row.write_calls_s > 0
        assert row.fsync_s > 0
        assert row.between_writes_s >= -1e-3


def test_save_phases_bytes_match_disk(job_files):
    phases = bench.save_phases(job_files["dcp"], records_around(job_files["dcp"]), asynchronous=False)

    # Rank 0 also writes the coordinator's .metadata (117,843 bytes in checkpoint_files.txt).
    assert set(phases.loc[phases["rank"] == 0, "bytes_written"]) == {22000680 + 117843}
    assert set(phases.loc[phases["rank"] == 1, "bytes_written"]) == {22052457}


def test_save_phases_io_matches_darshan(job_files):
    files = job_files["dcp"]
    phases = bench.save_phases(files, records_around(files), asynchronous=False)
    data_files = files[files["file"].str.endswith(".distcp") & (files["BYTES_WRITTEN"] > 0)]

    assert (phases["write_calls_s"] + phases["fsync_s"]).sum() == pytest.approx(data_files["F_WRITE_TIME"].sum())


def test_save_phases_arrival_lead(job_files):
    phases = bench.save_phases(job_files["dcp"], records_around(job_files["dcp"], stagger_s=0.3), asynchronous=False)

    # Each rank starts 0.3 s per rank number before its own data file opens; the lead is over the last rank.
    for step, group in phases.groupby("step"):
        lead = group.set_index("rank")["arrival_lead_s"]
        assert lead.min() == pytest.approx(0.0), step
        assert lead.max() > 0, step


def test_save_phases_asynchronous_staging(job_files):
    phases = bench.save_phases(job_files["dcp"], records_around(job_files["dcp"]), asynchronous=True)

    assert set(phases["staging_s"]) == {SAVE_CALL_S}
    assert phases["until_open_s"].to_numpy() == pytest.approx(BEFORE_OPEN_S - STATE_DICT_S - SAVE_CALL_S, abs=1e-3)


def test_save_phases_rank_without_writes(job_files):
    phases = bench.save_phases(job_files["torch_save"], records_around(job_files["torch_save"]), asynchronous=False)
    idle = phases[phases["rank"] == 1]

    assert len(idle) == 3
    assert set(idle["bytes_written"]) == {0}
    assert idle[bench.PHASE_COLUMNS].isna().all().all()
    assert set(phases.loc[phases["rank"] == 0, "data_file"]) == {"step_0.pt", "step_1.pt", "step_2.pt"}


def test_save_phases_untraced(job_files):
    records = records_around(job_files["dcp"])
    phases = bench.save_phases(pd.DataFrame(), records, asynchronous=False)

    assert len(phases) == 6
    assert phases["bytes_written"].isna().all()
    assert phases[bench.PHASE_COLUMNS].isna().all().all()
    assert (phases["save_s"] > 0).all()
    assert bench.phase_means(phases)["0"]["bytes_written"] is None


def test_split_before_open_old_records():
    parts = bench.split_before_open(0.4, {"step": 1}, asynchronous=True)

    assert parts == {"state_dict_s": None, "staging_s": None, "until_open_s": 0.4}


def test_phase_means_by_rank(job_files):
    phases = bench.save_phases(job_files["torch_save"], records_around(job_files["torch_save"]), asynchronous=False)
    means = bench.phase_means(phases)

    assert sorted(means) == ["0", "1"]
    assert means["0"]["checkpoints"] == 3
    assert means["0"]["bytes_written"] == 43477977
    assert means["1"]["write_calls_s"] is None
    assert means["1"]["save_s"] == pytest.approx(1.0)


# ---- figures of a mode from the workflow's table ----------------------------------------------

def summary_row(job: str, baseline: dict, directory: Path) -> dict:
    """Return the job's row of summary.csv, as summary_table.py writes it and the benchmark reads it back."""
    found, info = locate_logs.locate(job, None, DATA / job / "logs", None, [], 0)
    processes = locate_logs.process_table(found, info["checkpoint_dir"])
    processes["error"] = processes["error"].fillna("")
    metrics = darshan_metrics.compute(job, processes, DATA / job / "logs", info, manifest_for(job, DATA / job / "logs"))[0]
    summary_table.build_table([metrics], baseline).to_csv(directory / "summary.csv", index=False)
    return pd.read_csv(directory / "summary.csv").to_dict(orient="records")[0]


def test_mode_figures_from_summary(job_files, tmp_path):
    baseline = {"write_mib_per_s": 200.0, "read_mib_per_s": 1000.0}
    manifest = manifest_for("dcp", DATA / "dcp" / "logs")
    phases = bench.save_phases(job_files["dcp"], records_around(job_files["dcp"]), asynchronous=False)

    figures = bench.mode_figures(summary_row("dcp", baseline, tmp_path), manifest, phases, baseline["write_mib_per_s"])

    size_bytes = 117843 + 22000680 + 22052457
    # conftest's manifest_for sets every save's completion time to 0.2 s.
    assert figures["checkpoint_size_bytes"] == size_bytes
    assert figures["save_mib_per_s"] == pytest.approx(size_bytes / 1024**2 / 0.2)
    assert figures["save_fraction_of_baseline"] == pytest.approx(figures["save_mib_per_s"] / 200.0)
    assert figures["darshan_fraction_of_baseline"] > 0
    assert figures["save_fraction_at_least_goal"] is True
    assert figures["baseline_time_for_checkpoint_s"] == pytest.approx(size_bytes / 1024**2 / 200.0)
    assert sorted(figures["phase_means_by_rank"]) == ["0", "1"]


def test_number_of_table_cells():
    assert bench.number("0.5") == 0.5
    assert bench.number("not traced") is None
    assert bench.number(float("nan")) is None
    assert bench.number(None) is None


def test_goal_verdict():
    sizes = {"1gib": {"modes": {"dcp": {"save_fraction_of_baseline": 0.79}}}}

    assert bench.goal_verdict(sizes)["met"] is False
    assert bench.goal_verdict({})["met"] is None
    sizes["1gib"]["modes"]["dcp"]["save_fraction_of_baseline"] = 0.8
    assert bench.goal_verdict(sizes)["met"] is True


# ---- the workflow run and the machine ------------------------------------------------------------

def test_workflow_config_overrides(tmp_path):
    config = bench.workflow_config(bench.SIZES["64mib"], "bench-64mib", tmp_path / "checkpoints", "all",
                                   "/opt/darshan", traced=True)

    assert config["model"]["small_vit"]["hidden_dim"] == 320
    assert config["checkpoint"] == {"root": str(tmp_path / "checkpoints"), "keep": "all"}
    assert config["darshan"] == {"enabled": "true", "library": "/opt/darshan"}
    assert bench.workflow_config(bench.SIZES["1gib"], "r", tmp_path, "none", None, traced=False)["darshan"] == {
        "enabled": "false"}


def test_snakemake_command(tmp_path):
    command = bench.snakemake_command(tmp_path, tmp_path / "bench_config.yaml")

    assert command[:3] == [sys.executable, "-m", "snakemake"]
    assert command[command.index("--profile") + 1] == str(REPOSITORY / "profiles" / "local")
    assert command[command.index("--directory") + 1] == str(tmp_path)
    assert command[command.index("--snakefile") + 1] == str(REPOSITORY / "Snakefile")
    # --configfile takes every file name after it, so it comes last.
    assert command[-2:] == ["--configfile", str(tmp_path / "bench_config.yaml")]


def test_run_workflow_failure_names_log(tmp_path):
    command = [sys.executable, "-c", "import sys; print('rule train failed'); sys.exit(3)"]

    with pytest.raises(RuntimeError, match="exit code 3") as failure:
        bench.run_workflow(command, tmp_path / "snakemake.log")

    assert str(tmp_path / "snakemake.log") in str(failure.value)
    assert "rule train failed" in str(failure.value)


def test_filesystem_of_directory(tmp_path):
    description = bench.filesystem(tmp_path)

    assert description["directory"] == str(tmp_path)
    assert description["free_bytes"] > 0
    if shutil.which("findmnt"):
        assert description["type"]


@pytest.mark.torch_threads
def test_serialization_probe_restores_crc_setting():
    from torch.utils.serialization import config

    before = config.save.compute_crc32
    probe = bench.serialization_probe(8 * 1024**2, tensor_bytes=1024**2)

    assert probe["bytes"] == 8 * 1024**2
    assert probe["crc32_on_mib_per_s"] > 0
    assert probe["crc32_off_mib_per_s"] > 0
    assert config.save.compute_crc32 == before


def test_results_table_has_each_mode():
    figures = {"checkpoint_size_bytes": 64 * 1024**2, "completion_mean_s": 0.5, "save_mib_per_s": 128.0,
               "save_fraction_of_baseline": 0.64, "darshan_fraction_of_baseline": None}
    sizes = {"64mib": {"baseline": {"write_mib_per_s": 200.0}, "modes": {"dcp": figures, "torch_save": figures}}}

    lines = bench.results_table(sizes).splitlines()

    assert len(lines) == 4
    assert lines[2] == "| 64mib | dcp | 64.0 | 0.500 | 128 | 200 | 0.64 | – |"


# ---- the save timings train_checkpoint.py records --------------------------------------------------

@pytest.fixture
def one_rank_group(monkeypatch):
    """Join a 1-rank gloo process group on 127.0.0.1 in this process."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    # The background writer of process-based async_save rendezvouses at MASTER_ADDR.
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.torch_threads
@pytest.mark.parametrize("mode", train_checkpoint.MODES)
def test_save_records_state_dict_time(mode, one_rank_group, tmp_path):
    model = train_checkpoint.wrap_model(train_checkpoint.build_model(
        {"name": "small_vit", "small_vit": {"patch_size": 16, "num_layers": 1, "num_heads": 2, "hidden_dim": 32,
                                            "mlp_dim": 64}}, {"image_size": 32, "num_classes": 10}),
        mode, torch.device("cpu"), 1)
    optimizer = torch.optim.Adam(model.parameters())
    checkpointer = train_checkpoint.Checkpointer(mode, tmp_path, True, 0)
    try:
        checkpointer.save(1, model, optimizer)
    finally:
        checkpointer.close()

    record = checkpointer.records[0]
    assert record.state_dict_s > 0
    assert record.save_call_s > 0
    assert record.state_dict_s + record.save_call_s <= record.blocking_s
    assert record.blocking_s <= record.completion_s
