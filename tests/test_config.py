"""Config validation: the schema, the machine checks and the Darshan runtime lookup."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import darshan_runtime
import settings_check
from conftest import REPOSITORY

SCHEMA = REPOSITORY / "config" / "schema" / "config.schema.yaml"
DEFAULT = yaml.safe_load((REPOSITORY / "config" / "config.yaml").read_text())


def config_with(changes: dict) -> dict:
    """Return the default config with dotted keys replaced (a value of ... deletes the key)."""
    config = copy.deepcopy(DEFAULT)
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        if value is ...:
            del node[last]
        else:
            node[last] = value
    return config


def check(config: dict) -> None:
    settings_check.validate_config(config, SCHEMA)
    settings_check.check_config(config)


def test_default_config_is_valid(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = copy.deepcopy(DEFAULT)

    check(config)

    assert config["darshan"]["enabled"] == "auto"


def test_defaults_filled_in():
    config = config_with({"training": {}, "darshan": {}})

    settings_check.validate_config(config, SCHEMA)

    assert config["training"]["steps"] == 3
    assert config["darshan"]["max_records"] == 50000


BAD_CONFIGS = [
    ({"modes": ["torch_save", "fsdp"]}, "modes.1", "'fsdp' is not allowed"),
    ({"modes": []}, "modes", "should be non-empty"),
    ({"modes": "dcp"}, "modes", "is not of type 'array'"),
    ({"modes": ["dcp", "dcp"]}, "modes", "non-unique"),
    ({"run_id": "my run"}, "run_id", "does not match"),
    ({"run_id": "a;rm -rf ~"}, "run_id", "does not match"),
    ({"run_id": ""}, "run_id", "does not match"),
    ({"training.steps": 0}, "training.steps", "less than the minimum"),
    ({"training.steps": "3"}, "training.steps", "is not of type 'integer'"),
    ({"training.batch_size": -8}, "training.batch_size", "less than the minimum"),
    ({"training.checkpoint_interval": 1.5}, "training.checkpoint_interval", "is not of type 'integer'"),
    ({"training.image_size": 8}, "training.image_size", "less than the minimum"),
    ({"training.learning_rate": 0}, "training.learning_rate", "less than or equal to the minimum"),
    ({"training.epochs": 2}, "training", "'epochs' was unexpected"),
    ({"launch.ranks_per_node": 0}, "launch.ranks_per_node", "less than the minimum"),
    ({"launch.nodes": "two"}, "launch.nodes", "is not of type 'integer'"),
    ({"launch.device": "gpu"}, "launch.device", "'gpu' is not allowed"),
    ({"launch.launcher": "mpirun"}, "launch.launcher", "'mpirun' is not allowed"),
    ({"checkpoint.fsync": "yes"}, "checkpoint.fsync", "is not of type 'boolean'"),
    ({"checkpoint.root": ""}, "checkpoint.root", "should be non-empty"),
    ({"darshan.enabled": "maybe"}, "darshan.enabled", "'maybe' is not allowed"),
    ({"darshan.max_records": 100}, "darshan.max_records", "less than the minimum"),
    ({"darshan.modules": ["POSIX", "NFS"]}, "darshan.modules.1", "'NFS' is not allowed"),
    ({"darshan.log_wait_s": -1}, "darshan.log_wait_s", "less than the minimum"),
    ({"summaries.html": "some"}, "summaries.html", "'some' is not allowed"),
    ({"model.name": "ResNet-50"}, "model.name", "does not match"),
    ({"model.small_vit": {"num_layers": 0}}, "model.small_vit.num_layers", "less than the minimum"),
    ({"model.pretrained": 1}, "model.pretrained", "is not of type 'boolean'"),
    ({"existing_logs": {"fsdp": {"logs": "/tmp"}}}, "existing_logs", "'fsdp' is not allowed"),
    ({"existing_logs": {"dcp": {"manifest": "/tmp/m.json"}}}, "existing_logs.dcp", "'logs' is a required property"),
    ({"launch": ...}, "(top level)", "'launch' is a required property"),
    ({"extra": 1}, "(top level)", "'extra' was unexpected"),
]


@pytest.mark.parametrize(("changes", "key", "message"), BAD_CONFIGS, ids=[str(case[0]) for case in BAD_CONFIGS])
def test_schema_rejects_bad_value(changes, key, message):
    with pytest.raises(settings_check.ConfigError) as error:
        settings_check.validate_config(config_with(changes), SCHEMA)

    assert f"{key}: " in str(error.value)
    assert message in str(error.value)


def test_enum_error_lists_allowed_values():
    with pytest.raises(settings_check.ConfigError) as error:
        settings_check.validate_config(config_with({"launch.device": "gpu"}), SCHEMA)

    assert "'auto', 'cpu', 'cuda'" in str(error.value)


def test_unknown_model_name_suggests_similar():
    with pytest.raises(settings_check.ConfigError) as error:
        settings_check.check_model_name("vit_h_15")

    assert "model.name: 'vit_h_15'" in str(error.value)
    assert "vit_h_14" in str(error.value)


def test_known_torchvision_model_accepted():
    settings_check.check_model_name("resnet18")


def test_checkpoint_root_missing_parent(tmp_path):
    with pytest.raises(settings_check.ConfigError) as error:
        settings_check.check_checkpoint_root(str(tmp_path / "typo" / "checkpoints"))

    assert "does not exist" in str(error.value)


def test_checkpoint_root_is_a_file(tmp_path):
    (tmp_path / "file").write_text("")

    with pytest.raises(settings_check.ConfigError) as error:
        settings_check.check_checkpoint_root(str(tmp_path / "file"))

    assert "is not a directory" in str(error.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to any directory")
def test_checkpoint_root_not_writable(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)

    with pytest.raises(settings_check.ConfigError) as error:
        settings_check.check_checkpoint_root(str(locked / "checkpoints"))

    assert "not writable" in str(error.value)


def test_unset_variable_in_path_named(monkeypatch):
    monkeypatch.delenv("SCRATCH", raising=False)

    with pytest.raises(settings_check.ConfigError) as error:
        settings_check.check_checkpoint_root("$SCRATCH/checkpoints")

    assert "SCRATCH, which is not set" in str(error.value)


def test_path_with_spaces_quotes_semicolon_accepted(tmp_path):
    odd = tmp_path / "my dir; 'quoted' \"x\""
    odd.mkdir()

    root = settings_check.check_checkpoint_root(str(odd / "checkpoints"))

    assert root.parent == odd


def test_existing_logs_mode_not_listed(tmp_path):
    config = config_with({"modes": ["dcp"], "existing_logs": {"torch_save": {"logs": str(tmp_path)}}})

    with pytest.raises(settings_check.ConfigError) as error:
        check(config)

    assert "existing_logs.torch_save" in str(error.value)


def test_existing_logs_directory_missing(tmp_path):
    config = config_with({"existing_logs": {"dcp": {"logs": str(tmp_path / "nope")}}})

    with pytest.raises(settings_check.ConfigError) as error:
        check(config)

    assert "existing_logs.dcp.logs" in str(error.value)
    assert "is not a directory" in str(error.value)


# ---- Darshan runtime lookup -------------------------------------------------------

def fake_install(prefix: Path) -> Path:
    """Lay out an installation prefix with a library file where Darshan puts it."""
    (prefix / "lib").mkdir(parents=True)
    library = prefix / "lib" / "libdarshan.so"
    library.write_bytes(b"")
    return library


def test_library_found_from_prefix_setting(tmp_path):
    library = fake_install(tmp_path / "darshan")

    found, searched = darshan_runtime.find_library(str(tmp_path / "darshan"), {})

    assert found == library.resolve()
    assert "darshan.library" in searched[0]


def test_library_found_from_environment_prefix(tmp_path):
    library = fake_install(tmp_path / "darshan")

    found, _ = darshan_runtime.find_library("", {"DARSHAN_ROOT": str(tmp_path / "darshan")})

    assert found == library.resolve()


def test_required_darshan_missing_says_where_and_how(tmp_path):
    with pytest.raises(darshan_runtime.DarshanNotFoundError) as error:
        darshan_runtime.resolve_runtime(True, str(tmp_path / "none"), {"LD_LIBRARY_PATH": str(tmp_path / "lib")})

    message = str(error.value)
    assert str(tmp_path / "none") in message
    assert str(tmp_path / "lib") in message
    assert "module load darshan" in message


def test_auto_darshan_missing_runs_untraced(tmp_path, caplog):
    runtime = darshan_runtime.resolve_runtime("auto", "", {})

    assert runtime is None
    assert "untraced" in caplog.text


def test_disabled_darshan_not_searched(tmp_path):
    fake_install(tmp_path / "darshan")

    assert darshan_runtime.resolve_runtime(False, str(tmp_path / "darshan"), {}) is None


def test_job_environment_sets_only_tracing_variables(tmp_path):
    runtime = darshan_runtime.DarshanRuntime(library=tmp_path / "libdarshan.so", log_path_by_env=["DARSHAN_LOG_DIR_PATH"])

    variables = darshan_runtime.job_environment(runtime, tmp_path / "logs", tmp_path / "darshan.conf", dxt=True)

    assert variables["LD_PRELOAD"] == str(tmp_path / "libdarshan.so")
    assert variables["DARSHAN_ENABLE_NONMPI"] == "1"
    assert variables["DARSHAN_LOG_DIR_PATH"] == str(tmp_path / "logs")
    assert variables["DARSHAN_LOGPATH"] == str(tmp_path / "logs")
    assert variables["DXT_ENABLE_IO_TRACE"] == "1"
    assert "LD_PRELOAD" not in os.environ or os.environ["LD_PRELOAD"] != variables["LD_PRELOAD"]


def test_config_file_raises_record_limit():
    text = darshan_runtime.render_config_file(50000, ["POSIX", "STDIO"], dxt=False)

    assert text.splitlines()[0] == "MAX_RECORDS 50000 POSIX,STDIO"


@pytest.mark.skipif(not Path("/tmp/darshan-install/bin/darshan-config").exists(),
                    reason="no Darshan runtime build at /tmp/darshan-install")
def test_runtime_described_by_darshan_config():
    runtime = darshan_runtime.describe_runtime(Path("/tmp/darshan-install/lib/libdarshan.so"))

    assert runtime.version
    assert runtime.log_path_by_env


# ---- through Snakemake ----------------------------------------------------------------

def test_snakemake_reports_bad_value_without_traceback(tmp_path):
    (tmp_path / "bad.yaml").write_text("training:\n  steps: -1\n")
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPOSITORY / "Snakefile"), "--cores", "1", "-n",
         "--configfile", "bad.yaml"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )

    assert result.returncode != 0
    assert "training.steps: -1 is less than the minimum of 1" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_snakemake_fails_early_when_darshan_required(tmp_path):
    (tmp_path / "traced.yaml").write_text(f"darshan:\n  enabled: true\n  library: {tmp_path}/missing\n")
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPOSITORY / "Snakefile"), "--cores", "1", "-n",
         "--configfile", "traced.yaml"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={key: value for key, value in os.environ.items() if not key.startswith("DARSHAN")},
    )

    output = result.stderr + result.stdout
    assert result.returncode != 0
    assert "libdarshan.so was not found" in output
    assert f"{tmp_path}/missing" in output



def test_more_ranks_than_local_cores_rejected():
    import run_training

    with pytest.raises(run_training.TrainingJobError) as error:
        run_training.check_local_cores("torchrun", world_size=3, cores=2, oversubscribe=False)

    assert "is 3 ranks, but this job may use 2 cores" in str(error.value)
    assert "launch.oversubscribe: true" in str(error.value)


def test_more_ranks_than_cores_allowed():
    import run_training

    run_training.check_local_cores("torchrun", world_size=3, cores=2, oversubscribe=True)
    run_training.check_local_cores("srun", world_size=8, cores=1, oversubscribe=False)
