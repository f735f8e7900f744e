"""Checks of config/config.yaml that a JSON Schema cannot express.

The schema checks types, ranges and names. These checks look at the machine:
paths that must exist or be writable, variables that must be set, model names
that torchvision must know. Each error names the key, the value and the fix.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator, validators

SMALL_VIT = "small_vit"
UNEXPANDED_VARIABLE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")


class ConfigError(ValueError):
    """Raised for a config value that is valid by the schema but unusable here."""


def _with_defaults(validator_class):
    """Extend a validator class so that validation also fills in schema defaults."""
    check_properties = validator_class.VALIDATORS["properties"]

    def fill_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = subschema["default"]
        yield from check_properties(validator, properties, instance, schema)

    return validators.extend(validator_class, {"properties": fill_defaults})


DefaultingValidator = _with_defaults(Draft202012Validator)


JSON_TYPES = {"string": str, "object": dict, "array": list, "integer": int, "number": (int, float), "boolean": bool}


def _matching_branch_errors(error) -> list:
    """Return the errors of the oneOf/anyOf branches whose type fits the value, so the message is about that branch."""
    branches = error.validator_value if isinstance(error.validator_value, list) else []
    matching = []
    for sub_error in error.context or []:
        index = sub_error.relative_schema_path[0] if sub_error.relative_schema_path else None
        branch = branches[index] if isinstance(index, int) and index < len(branches) else {}
        expected = JSON_TYPES.get(branch.get("type") if isinstance(branch, dict) else None)
        if expected is not None and isinstance(error.instance, expected):
            matching.append(sub_error)
    return matching


def _looks_like(value, json_type: str) -> bool:
    """Return whether a string is the text of a value of ``json_type``, as --config leaves nested numbers."""
    if not isinstance(value, str):
        return False
    if json_type == "boolean":
        return value.lower() in ("true", "false")
    try:
        number = float(value)
    except ValueError:
        return False
    return json_type == "number" or (json_type == "integer" and number.is_integer())


def _describe(error) -> str:
    key = ".".join(str(part) for part in error.absolute_path) or "(top level)"
    schema = error.schema if isinstance(error.schema, dict) else {}
    if error.validator in ("oneOf", "anyOf"):
        matching = _matching_branch_errors(error)
        if matching:
            return " ".join(_describe(sub_error) for sub_error in matching)
        kinds = " or ".join(branch.get("description") or branch.get("type", "?") for branch in error.validator_value
                            if isinstance(branch, dict))
        return f"{key}: {error.instance!r} must be {kinds}."
    if error.validator == "type" and _looks_like(error.instance, error.validator_value):
        return (f"{key}: {error.message}. Snakemake's --config passes values inside a mapping as strings; "
                "set this key in a file given with --configfile instead.")
    if error.validator == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        return f"{key}: {error.message}. Allowed keys here: {', '.join(allowed)}."
    if error.validator == "enum":
        return f"{key}: {error.instance!r} is not allowed. Allowed values: {', '.join(map(repr, error.validator_value))}."
    if error.validator == "propertyNames":
        return f"{key}: {error.message}."
    hint = f" ({schema['description']})" if schema.get("description") else ""
    return f"{key}: {error.message}{hint}."


def validate_config(config: dict, schema_path: Path, sources: str = "config/config.yaml or --config") -> None:
    """Validate the config against the schema and fill in defaults.

    Args:
        sources: where the config came from, named in the error.

    Raises:
        ConfigError: listing every invalid key with its value and what is allowed.
    """
    schema = yaml.safe_load(Path(schema_path).read_text())
    errors = sorted(DefaultingValidator(schema).iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = "\n  ".join(_describe(error) for error in errors)
        raise ConfigError(f"invalid config (from {sources}):\n  {lines}")


def expand_path(key: str, value: str) -> Path:
    """Expand ``~`` and environment variables in a path from the config.

    Raises:
        ConfigError: the path names an environment variable that is not set.
    """
    expanded = os.path.expandvars(os.path.expanduser(value))
    missing = UNEXPANDED_VARIABLE.search(expanded)
    if missing:
        raise ConfigError(
            f"{key}: {value!r} uses the environment variable {missing.group(1)}, which is not set. "
            f"Set it (for example `export {missing.group(1)}=/path`) or write the path out."
        )
    return Path(expanded)


def check_checkpoint_root(value: str) -> Path:
    """Check that the checkpoint root is, or can be made, a writable directory."""
    root = expand_path("checkpoint.root", value).absolute()
    if root.exists() and not root.is_dir():
        raise ConfigError(f"checkpoint.root: {str(root)!r} exists and is not a directory. Give a directory.")
    existing = root if root.exists() else root.parent
    if not existing.is_dir():
        raise ConfigError(
            f"checkpoint.root: {str(root)!r} cannot be created because its parent {str(existing)!r} "
            "does not exist. Check the path for typos or create the parent first."
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"checkpoint.root: {str(existing)!r} is not writable by this user. "
            "Choose a directory you can write to, such as one under $SCRATCH."
        )
    return root


def check_model_name(name: str, key: str = "model.name") -> None:
    """Check that the model is the small ViT or a torchvision classification model."""
    if name == SMALL_VIT:
        return
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        close = difflib.get_close_matches(name, known, n=8, cutoff=0.6)
        close += [c for c in known if c.split("_")[0] == name.split("_")[0] and c not in close]
        hint = f" Similar names: {', '.join(close[:8])}." if close else ""
        raise ConfigError(
            f"{key}: {name!r} is not a torchvision classification model.{hint} "
            f"Use {SMALL_VIT!r} or a name from torchvision.models.list_models(module=torchvision.models)."
        )


def check_patch_size(key: str, model: dict, training: dict) -> None:
    """Check that the small ViT's patch size divides the image size, as torchvision requires."""
    if model.get("name") != SMALL_VIT:
        return
    patch_size = (model.get(SMALL_VIT) or {}).get("patch_size")
    image_size = training.get("image_size")
    if patch_size and image_size and image_size % patch_size:
        raise ConfigError(
            f"{key}: patch_size {patch_size} does not divide training.image_size {image_size}, so torchvision's "
            f"VisionTransformer cannot be built. Choose a patch_size that divides {image_size}, such as 8 or 16."
        )


def check_local_launch(points: list[tuple[int, int]], cores: int | None, oversubscribe: bool,
                       keys: tuple[str, str]) -> None:
    """Reject ranks that a local run cannot start: more than one node, or more ranks than cores.

    The workflow calls it before the first job starts, so that a sweep does not stop
    hours in at the first such point. ``points`` are (nodes, ranks per node), and ``keys`` name the config
    keys they came from.

    Raises:
        ConfigError: naming the key, the value and the fix.
    """
    nodes_key, ranks_key = keys
    for nodes, ranks_per_node in points:
        if nodes > 1:
            raise ConfigError(
                f"{nodes_key}: {nodes} nodes, but this run starts the ranks on this machine with torchrun, which "
                "runs one node. Use a Slurm profile (such as profiles/perlmutter), run inside a Slurm allocation, "
                f"or give {nodes_key} as 1."
            )
        if cores is not None and not oversubscribe and ranks_per_node > cores:
            raise ConfigError(
                f"{ranks_key}: {ranks_per_node} ranks per node, but Snakemake may use {cores} cores here, so the ranks would "
                f"share cores and every time measured would include that wait. Run with --cores {ranks_per_node} "
                f"or more, lower {ranks_key}, or set launch.oversubscribe: true to accept it."
            )


def check_existing_logs(existing: dict, modes: list[str]) -> None:
    """Check that every existing-logs entry belongs to a listed mode and its paths exist."""
    for mode, entry in existing.items():
        if mode not in modes:
            raise ConfigError(
                f"existing_logs.{mode}: the mode {mode!r} is not in modes {modes}. "
                f"Add it to modes or remove the entry."
            )
        logs = expand_path(f"existing_logs.{mode}.logs", entry["logs"])
        if not logs.is_dir():
            raise ConfigError(f"existing_logs.{mode}.logs: {str(logs)!r} is not a directory. Give the directory that contains the .darshan files.")
        if entry.get("manifest"):
            manifest = expand_path(f"existing_logs.{mode}.manifest", entry["manifest"])
            if not manifest.is_file():
                raise ConfigError(f"existing_logs.{mode}.manifest: {str(manifest)!r} is not a file. Give the manifest.json of that job or remove the key.")


def sweep_enabled(config: dict) -> bool:
    """Return whether sweep.enabled is on, given as a boolean or as the string that --config passes."""
    return str((config.get("sweep") or {}).get("enabled", False)).lower() == "true"


def check_sweep(config: dict, existing: dict) -> None:
    """Check that the sweep's points can be built and its models exist, before any job starts."""
    import sweep_points

    if existing:
        raise ConfigError(
            f"sweep.enabled is true and existing_logs names {', '.join(sorted(existing))}. A sweep runs every "
            "mode itself; remove existing_logs or set sweep.enabled: false."
        )
    try:
        points = sweep_points.sweep_points(config)
    except sweep_points.SweepError as error:
        raise ConfigError(str(error)) from None
    for point in points:
        check_patch_size(f"sweep.models ({point.model_label})", point.model, config["training"])
    for name in sorted({point.model["name"] for point in points}):
        check_model_name(name, "sweep.models")


def check_config(config: dict) -> None:
    """Run every check that needs the machine; the schema has already passed.

    Raises:
        ConfigError: with the key, the value and the fix.
    """
    modes = list(config["modes"])
    existing = dict(config.get("existing_logs") or {})
    check_existing_logs(existing, modes)

    if sweep_enabled(config):
        check_sweep(config, existing)

    modes_to_run = [mode for mode in modes if mode not in existing]
    if not modes_to_run:
        return
    check_checkpoint_root(config["checkpoint"]["root"])
    check_model_name(config["model"]["name"])
    check_patch_size("model.small_vit", config["model"], config["training"])
    library = config["darshan"].get("library") or ""
    if library:
        expand_path("darshan.library", library)
    for index, directory in enumerate(config["darshan"].get("extra_log_dirs") or []):
        expand_path(f"darshan.extra_log_dirs[{index}]", directory)
