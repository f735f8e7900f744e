"""Sweeps: the points a config expands to, their checks, and a real sweep run through Snakemake."""

from __future__ import annotations

import copy
import json

import pandas as pd
import pytest
import yaml

import settings_check
import sweep_points
import sweep_table
from conftest import REPOSITORY
from test_workflow import TINY_MODEL, run_snakemake

SCHEMA = REPOSITORY / "config" / "schema" / "config.schema.yaml"
DEFAULT = yaml.safe_load((REPOSITORY / "config" / "config.yaml").read_text())


def sweep_config(**sweep) -> dict:
    config = copy.deepcopy(DEFAULT)
    config["sweep"] = {"enabled": True, **sweep}
    settings_check.validate_config(config, SCHEMA)
    return config


def test_repository_sweep_file_ranks_repeats():
    config = copy.deepcopy(DEFAULT)
    config.update(yaml.safe_load((REPOSITORY / "config" / "sweep.yaml").read_text()))
    settings_check.validate_config(config, SCHEMA)

    points = sweep_points.sweep_points(config)

    assert [point.ranks for point in points] == [1, 2, 4]
    assert config["sweep"]["repeats"] == 3
    assert settings_check.sweep_enabled(config)


def test_points_cross_all_lists():
    config = sweep_config(nodes=[1, 2], ranks_per_node=[1, 4],
                          models=["small_vit", {"name": "small_vit", "small_vit": {"hidden_dim": 512}}])

    points = sweep_points.sweep_points(config)

    assert len(points) == 8
    assert [point.name for point in points[:4]] == [
        "n1_r1_small_vit", "n1_r1_small_vit-hiddendim512", "n1_r4_small_vit", "n1_r4_small_vit-hiddendim512"]
    assert points[-1].ranks == 8
    wide = points[1].model
    assert wide["small_vit"]["hidden_dim"] == 512
    assert wide["small_vit"]["num_layers"] == DEFAULT["model"]["small_vit"]["num_layers"]


def test_empty_lists_mean_launch_values():
    config = sweep_config()

    points = sweep_points.sweep_points(config)

    assert [point.name for point in points] == ["n1_r2_small_vit"]


def test_point_settings_replace_launch_model():
    config = sweep_config(ranks_per_node=[4], models=[{"name": "resnet18", "label": "rn18"}])
    point = sweep_points.sweep_points(config)[0]
    settings = {"mode": "dcp", "model": config["model"], "launch": config["launch"],
                "checkpoint": {"dir": "/old", "fsync": True}, "training": config["training"]}

    changed = sweep_points.point_settings(settings, point, "/ckpt/sweep/n1_r4_rn18/repeat1/dcp")

    assert changed["launch"]["ranks_per_node"] == 4
    assert changed["model"]["name"] == "resnet18"
    assert "label" not in changed["model"]
    assert changed["checkpoint"] == {"dir": "/ckpt/sweep/n1_r4_rn18/repeat1/dcp", "fsync": True}
    assert changed["sweep"]["point"] == "n1_r4_rn18"
    assert settings["launch"]["ranks_per_node"] == 2, "the shared settings must not change"


def test_two_models_with_one_label_rejected():
    config = sweep_config(models=["resnet18", {"name": "resnet50", "label": "resnet18"}])

    with pytest.raises(settings_check.ConfigError, match="more than one entry is named 'resnet18'"):
        settings_check.check_config(config)


def test_hidden_dim_not_divisible_rejected():
    config = sweep_config(models=[{"name": "small_vit", "small_vit": {"hidden_dim": 250, "num_heads": 4}}])

    with pytest.raises(settings_check.ConfigError, match="hidden_dim 250.*num_heads 4"):
        settings_check.check_config(config)


def test_unknown_sweep_model_named_with_its_key():
    config = sweep_config(models=["small_vit", "resnet5"])

    with pytest.raises(settings_check.ConfigError, match=r"sweep.models: 'resnet5' is not a torchvision.*resnet50"):
        settings_check.check_config(config)


def test_sweep_with_existing_logs_rejected(tmp_path):
    config = sweep_config()
    config["existing_logs"] = {"dcp": {"logs": str(tmp_path)}}

    with pytest.raises(settings_check.ConfigError, match="sweep.enabled is true and existing_logs names dcp"):
        settings_check.check_config(config)


@pytest.mark.parametrize("sweep, key", [
    ({"ranks_per_node": [0]}, "sweep.ranks_per_node.0"),
    ({"ranks_per_node": [2, 2]}, "sweep.ranks_per_node"),
    ({"repeats": 0}, "sweep.repeats"),
    ({"rank": [1]}, "sweep"),
    ({"models": [{"name": "small_vit", "small_vit": {"hidden": 3}}]}, "sweep.models.0.small_vit"),
])
def test_schema_rejects_bad_sweep(sweep, key):
    config = copy.deepcopy(DEFAULT)
    config["sweep"] = sweep

    with pytest.raises(settings_check.ConfigError) as error:
        settings_check.validate_config(config, SCHEMA)

    assert f"{key}:" in str(error.value)


def test_missing_run_named_with_fix(tmp_path):
    with pytest.raises(sweep_table.SweepTableError, match="metrics file .*does not exist; rerun the sweep"):
        sweep_table.run_table(tmp_path, ["n1_r1_small_vit/repeat1/dcp"])
    with pytest.raises(sweep_table.SweepTableError, match="is not point/repeat/mode"):
        sweep_table.parse_run("n1_r1_small_vit/dcp")


def test_damaged_metrics_named_with_fix(tmp_path):
    run_dir = tmp_path / "n1_r1_small_vit" / "repeat1" / "dcp"
    (run_dir / "metrics").mkdir(parents=True)
    (run_dir / "metrics" / "metrics.json").write_text('{"mode": "dcp", ')

    with pytest.raises(sweep_table.SweepTableError, match="not valid JSON .*delete it and rerun"):
        sweep_table.run_table(tmp_path, ["n1_r1_small_vit/repeat1/dcp"])


@pytest.mark.slow
def test_sweep_over_ranks_with_repeats(tmp_path):
    """A real sweep: two modes at 1 and 2 ranks, two repeats each, untraced, with the storage baseline."""
    config = {**TINY_MODEL, "run_id": "sweep", "modes": ["torch_save", "dcp"],
              "checkpoint": {"root": str(tmp_path / "checkpoints")}, "darshan": {"enabled": False},
              "baseline": {"repeats": 1},
              "sweep": {"enabled": True, "ranks_per_node": [1, 2], "repeats": 2}}

    result = run_snakemake(tmp_path, "--profile", str(REPOSITORY / "profiles" / "local"), config=config)

    assert result.returncode == 0, result.stdout[-5000:]
    assert "sweep: 2 points x 2 modes x 2 repeats = 8 training jobs" in result.stdout
    sweep_dir = tmp_path / "results" / "sweep"
    runs = pd.read_csv(sweep_dir / "sweep_runs.csv")
    assert len(runs) == 8
    assert sorted(set(runs["point"])) == ["n1_r1_small_vit", "n1_r2_small_vit"]
    assert (runs["integrity"] == "ok").all()
    assert not runs["oversubscribed"].any()
    for run in runs.itertuples():
        manifest = json.loads((sweep_dir / run.point / run.repeat / run.mode / "train" / "manifest.json").read_text())
        assert manifest["world_size"] == run.ranks
        assert manifest["checkpoint_dir"] == str(tmp_path / "checkpoints" / "sweep" / "sweep" / run.point / run.repeat / run.mode)
        baseline = json.loads((sweep_dir / run.point / run.repeat / "baseline" / "baseline.json").read_text())
        assert run.baseline_write_mib_per_s == pytest.approx(baseline["write_mib_per_s"])

    summary = pd.read_csv(sweep_dir / "sweep.csv")
    assert len(summary) == 4
    assert list(summary["mode"]) == ["torch_save", "dcp", "torch_save", "dcp"]
    assert list(summary["ranks"]) == [1, 1, 2, 2]
    assert (summary["runs"] == 2).all()
    for row in summary.itertuples():
        repeats = runs[(runs["mode"] == row.mode) & (runs["ranks"] == row.ranks)]["blocking_mean_s"]
        assert row.blocking_mean_s_median == pytest.approx(repeats.median())
        assert row.blocking_mean_s_min == pytest.approx(repeats.min())
        assert row.blocking_mean_s_max == pytest.approx(repeats.max())
        assert row.blocking_mean_s_spread == pytest.approx((repeats.max() - repeats.min()) / repeats.median())

    values = pd.read_csv(sweep_dir / "plots" / "sweep_values.csv")
    blocking = values[values["panel"] == "blocking_vs_ranks"]
    assert sorted(zip(blocking["mode"], blocking["x"])) == [("dcp", 1.0), ("dcp", 2.0),
                                                             ("torch_save", 1.0), ("torch_save", 2.0)]
    for point in blocking.itertuples():
        row = summary[(summary["mode"] == point.mode) & (summary["ranks"] == point.x)].iloc[0]
        assert point.median == pytest.approx(row["blocking_mean_s_median"])
    # Untraced runs have no Darshan bandwidth, so the bandwidth panels plot the save throughput.
    bandwidth = values[(values["panel"] == "bandwidth_vs_ranks") & (values["mode"] == "dcp")]
    assert list(bandwidth["median"]) == pytest.approx(list(summary[summary["mode"] == "dcp"]["save_throughput_mib_per_s_median"]))
    assert (sweep_dir / "plots" / "sweep.png").stat().st_size > 0
    assert "median over the repeats" in (sweep_dir / "sweep.md").read_text()
    assert not (tmp_path / "results" / "summary.csv").exists(), "a sweep does not run the single run"
    assert (sweep_dir / "report.html").stat().st_size > 0
    assert not (tmp_path / "results" / "report.html").exists()


def test_vit_dimensions_on_resnet_rejected():
    config = sweep_config(models=[{"name": "resnet18", "small_vit": {"hidden_dim": 512}}])

    with pytest.raises(settings_check.ConfigError, match="'resnet18' sets small_vit dimensions"):
        settings_check.check_config(config)


def test_labels_differing_in_case_rejected():
    config = sweep_config(models=[{"name": "small_vit", "label": "VIT"}, {"name": "resnet18", "label": "vit"}])

    with pytest.raises(settings_check.ConfigError, match="ignoring case"):
        settings_check.check_config(config)


def test_patch_size_not_dividing_rejected():
    config = sweep_config(models=[{"name": "small_vit", "label": "p7", "small_vit": {"patch_size": 7}}])

    with pytest.raises(settings_check.ConfigError, match=r"sweep.models \(p7\): patch_size 7 does not divide"):
        settings_check.check_config(config)


@pytest.mark.parametrize("models, message", [
    ([{"name": "small_vit", "label": "vit wide"}], "sweep.models.0.label: 'vit wide' does not match"),
    ([{"name": "small_vit", "small_vit": {"hiddendim": 64}}], "'hiddendim' was unexpected). Allowed keys here:"),
    ([{"label": "x"}], "sweep.models.0: 'name' is a required property (a mapping {name, label, small_vit})"),
    (["Resnet50"], "sweep.models.0: 'Resnet50' does not match"),
    ([3], "sweep.models.0: 3 must be small_vit or a torchvision classification model name or a mapping"),
])
def test_bad_model_entry_named_precisely(models, message):
    config = copy.deepcopy(DEFAULT)
    config["sweep"] = {"enabled": True, "models": models}

    with pytest.raises(settings_check.ConfigError) as error:
        settings_check.validate_config(config, SCHEMA)

    assert message in str(error.value)
    assert "is not valid under any of the given schemas" not in str(error.value)


def test_string_number_gets_configfile_hint():
    config = copy.deepcopy(DEFAULT)
    config["sweep"] = {"enabled": "True", "ranks_per_node": ["1", "2"]}

    with pytest.raises(settings_check.ConfigError) as error:
        settings_check.validate_config(config, SCHEMA)

    assert "sweep.ranks_per_node.0: '1' is not of type 'integer'" in str(error.value)
    assert "--configfile" in str(error.value)
    assert "sweep.enabled" not in str(error.value)


@pytest.mark.parametrize("points, cores, oversubscribe, message", [
    ([(1, 1), (2, 1)], 2, False, "sweep.nodes: 2 nodes, but this run starts the ranks on this machine with torchrun"),
    ([(1, 1), (1, 4)], 2, False, "sweep.ranks_per_node: 4 ranks per node, but Snakemake may use 2 cores"),
])
def test_impossible_local_point_rejected(points, cores, oversubscribe, message):
    with pytest.raises(settings_check.ConfigError, match=message):
        settings_check.check_local_launch(points, cores, oversubscribe, ("sweep.nodes", "sweep.ranks_per_node"))


def test_oversubscribed_point_allowed():
    settings_check.check_local_launch([(1, 4)], 2, True, ("sweep.nodes", "sweep.ranks_per_node"))
    settings_check.check_local_launch([(1, 4)], None, False, ("sweep.nodes", "sweep.ranks_per_node"))


def test_sweep_beyond_cores_stops_early(tmp_path):
    config = {"checkpoint": {"root": str(tmp_path / "checkpoints")}, "darshan": {"enabled": False},
              "sweep": {"enabled": True, "ranks_per_node": [1, 4], "repeats": 1}}

    result = run_snakemake(tmp_path, "--cores", "2", config=config)

    assert result.returncode == 1
    assert "sweep.ranks_per_node: 4 ranks per node, but Snakemake may use 2 cores" in result.stdout
    assert "Traceback" not in result.stdout
    assert not (tmp_path / "results").exists()
    assert not (tmp_path / "checkpoints").exists()


def write_run(sweep_dir, run, metrics, manifest):
    run_dir = sweep_dir / run
    (run_dir / "metrics").mkdir(parents=True)
    (run_dir / "train").mkdir(parents=True)
    (run_dir / "metrics" / "metrics.json").write_text(json.dumps(metrics))
    (run_dir / "train" / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("metrics, manifest, message", [
    ([], {"world_size": 1, "settings": {}}, "is a JSON list, not an object"),
    ({}, {"world_size": 1, "settings": {}}, "the metrics file .* lacks mode"),
    ({"mode": "dcp"}, "x", "the manifest .* is a JSON str, not an object"),
    ({"mode": "dcp"}, {}, "the manifest .* lacks world_size, settings"),
])
def test_wrong_shape_json_named(tmp_path, metrics, manifest, message):
    write_run(tmp_path, "n1_r1_small_vit/repeat1/dcp", metrics, manifest)

    with pytest.raises(sweep_table.SweepTableError, match=message):
        sweep_table.run_table(tmp_path, ["n1_r1_small_vit/repeat1/dcp"], with_baseline=False)


def test_disabled_baseline_ignores_old_result(tmp_path):
    write_run(tmp_path, "n1_r1_small_vit/repeat1/dcp", {"mode": "dcp", "traced": False, "application": {}},
              {"world_size": 1, "settings": {}})
    baseline_dir = tmp_path / "n1_r1_small_vit" / "repeat1" / "baseline"
    baseline_dir.mkdir()
    (baseline_dir / "baseline.json").write_text(json.dumps({"write_mib_per_s": 100.0, "read_mib_per_s": 200.0}))

    with_baseline = sweep_table.run_table(tmp_path, ["n1_r1_small_vit/repeat1/dcp"], with_baseline=True)
    without = sweep_table.run_table(tmp_path, ["n1_r1_small_vit/repeat1/dcp"], with_baseline=False)

    assert with_baseline["baseline_write_mib_per_s"].tolist() == [100.0]
    assert "baseline_write_mib_per_s" not in without
    assert sweep_table.reduce_runs(without)["baseline_write_mib_per_s_median"].isna().all()
