"""Expand the sweep section of the config into the points the workflow runs.

A sweep crosses lists of nodes, ranks per node and models, and runs every point
``sweep.repeats`` times with every mode. Each point gets a short, stable name
(``n1_r2_small_vit``) that names its results directory, so a rerun with one more
list entry reuses the points already measured.
"""

from __future__ import annotations

import copy
import itertools
import re
from dataclasses import dataclass, field
from typing import Any

SMALL_VIT = "small_vit"
LABEL_CHARACTERS = re.compile(r"[^A-Za-z0-9_.-]+")


class SweepError(ValueError):
    """Raised for sweep settings that the schema accepts but that cannot run as given."""


@dataclass(frozen=True)
class SweepPoint:
    """One combination of nodes, ranks per node and model, run once per repeat."""

    nodes: int
    ranks_per_node: int
    model: dict = field(hash=False, compare=False)
    model_label: str

    @property
    def ranks(self) -> int:
        return self.nodes * self.ranks_per_node

    @property
    def name(self) -> str:
        return f"n{self.nodes}_r{self.ranks_per_node}_{self.model_label}"

    def as_dict(self) -> dict:
        return {"point": self.name, "nodes": self.nodes, "ranks_per_node": self.ranks_per_node,
                "ranks": self.ranks, "model": self.model_label, "model_name": self.model["name"]}


def model_label(entry: dict, base_small_vit: dict) -> str:
    """Name a sweep model: its label, else its name plus the small ViT dimensions that differ from model.small_vit."""
    if entry.get("label"):
        return LABEL_CHARACTERS.sub("-", entry["label"])
    label = entry["name"]
    if entry["name"] == SMALL_VIT:
        changed = {key: value for key, value in sorted((entry.get(SMALL_VIT) or {}).items())
                   if base_small_vit.get(key) != value}
        label += "".join(f"-{key.replace('_', '')}{value}" for key, value in changed.items())
    return label


def model_settings(entry: str | dict, base_model: dict) -> dict:
    """Return the model section of the training settings for one sweep model entry."""
    entry = {"name": entry} if isinstance(entry, str) else dict(entry)
    model = copy.deepcopy(base_model)
    model["name"] = entry["name"]
    if entry.get(SMALL_VIT):
        model[SMALL_VIT] = {**model.get(SMALL_VIT, {}), **entry[SMALL_VIT]}
    model["label"] = model_label(entry, base_model.get(SMALL_VIT, {}))
    return model


def sweep_points(config: dict) -> list[SweepPoint]:
    """Cross the sweep lists. An empty list means the single value in launch or model.

    Raises:
        SweepError: two model entries get the same label, or a small ViT has a hidden
            dimension its number of heads does not divide.
    """
    sweep = config["sweep"]
    launch = config["launch"]
    nodes = sweep.get("nodes") or [launch["nodes"]]
    ranks_per_node = sweep.get("ranks_per_node") or [launch["ranks_per_node"]]
    models = [model_settings(entry, config["model"]) for entry in (sweep.get("models") or [config["model"]["name"]])]

    # Labels name directories, so two that differ only in case would share one on a case-insensitive file system.
    labels = [model["label"].lower() for model in models]
    repeated = sorted({model["label"] for model in models if labels.count(model["label"].lower()) > 1})
    if repeated:
        raise SweepError(
            f"sweep.models: more than one entry is named {', '.join(map(repr, repeated))} (ignoring case). "
            "Give each entry a distinct label, for example {name: small_vit, label: vit_wide, small_vit: {...}}."
        )
    for entry in sweep.get("models") or []:
        if isinstance(entry, dict) and entry.get(SMALL_VIT) and entry["name"] != SMALL_VIT:
            raise SweepError(
                f"sweep.models: the entry for {entry['name']!r} sets small_vit dimensions, which apply only to "
                f"name: small_vit. Remove them, or set name: small_vit."
            )
    for model in models:
        vit = model.get(SMALL_VIT) or {}
        if model["name"] == SMALL_VIT and vit.get("hidden_dim", 1) % vit.get("num_heads", 1):
            raise SweepError(
                f"sweep.models: {model['label']!r} has hidden_dim {vit['hidden_dim']}, which its "
                f"num_heads {vit['num_heads']} does not divide. Choose a hidden_dim that is a multiple of num_heads."
            )

    return [SweepPoint(nodes=n, ranks_per_node=r, model=model, model_label=model["label"])
            for n, r, model in itertools.product(nodes, ranks_per_node, models)]


def point_settings(settings: dict, point: SweepPoint, checkpoint_dir: str) -> dict:
    """Return a mode's training settings with the point's nodes, ranks and model and its own checkpoint directory."""
    settings = copy.deepcopy(settings)
    settings["launch"] = {**settings["launch"], "nodes": point.nodes, "ranks_per_node": point.ranks_per_node}
    settings["model"] = {key: value for key, value in point.model.items() if key != "label"}
    settings["checkpoint"] = {**settings["checkpoint"], "dir": checkpoint_dir}
    settings["sweep"] = point.as_dict()
    return settings


def repeat_names(repeats: int) -> list[str]:
    """Return the directory names of the repeats: repeat1, repeat2, and so on."""
    return [f"repeat{index}" for index in range(1, repeats + 1)]


def describe(points: list[SweepPoint], modes: list[str], repeats: int) -> str:
    """Return one log line that counts the training jobs the sweep starts."""
    jobs = len(points) * len(modes) * repeats
    return (f"sweep: {len(points)} points x {len(modes)} modes x {repeats} repeats = {jobs} training jobs "
            f"({', '.join(point.name for point in points)})")
