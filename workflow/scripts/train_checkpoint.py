"""Train a small image model for a few steps and write a checkpoint after every N-th step.

One process of this program is one rank. ``torchrun`` or the tasks of ``srun`` start
it; ``run_training.py`` builds that command. Each checkpoint mode has one code path:

* ``torch_save``: DDP model. Rank 0 writes ``torch.save({"model", "optimizer"})`` to
  ``<checkpoint_dir>/step_<k>.pt`` while the other ranks wait on a barrier.
* ``dcp``: FSDP2 (``fully_shard``) model. ``torch.distributed.checkpoint.save`` writes
  ``<checkpoint_dir>/step_<k>/`` with one ``__<rank>_0.distcp`` shard file per rank and
  a ``.metadata`` file from the coordinator (rank 0).
* ``dcp_async``: as ``dcp`` with ``torch.distributed.checkpoint.async_save`` in a
  background thread. Each save waits for the previous one first.

Every rank writes what it did and how long each save took to
``<output_dir>/ranks/rank<k>.json``, which ``run_training.py`` merges into the manifest.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing.resource_tracker
import os
import re
import socket
import time
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torchvision
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import get_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel

log = logging.getLogger("train_checkpoint")

MODES = ("torch_save", "dcp", "dcp_async")

# DCP names its files __<rank>_<n>.distcp (shard data), .metadata (global metadata by
# the coordinator) and __<rank>.metadata (per-rank metadata when saving without
# collectives). Any of them may carry a .tmp suffix while it is written.
DISTCP_FILE = re.compile(r"^__(?P<rank>\d+)_\d+\.distcp$")
RANK_METADATA_FILE = re.compile(r"^__(?P<rank>\d+)\.metadata(\.tmp)?$")
GLOBAL_METADATA_FILE = re.compile(r"^\.metadata(\.tmp)?$")

# DCP raises CheckpointException, which derives from BaseException, not Exception.
SAVE_ERRORS = (Exception, CheckpointException)


class CheckpointSaveError(RuntimeError):
    """Raised when a checkpoint save fails; the message names mode, rank and path."""


@dataclass
class RankEnvironment:
    """Rank, world size, local rank and rendezvous address of this process, from torchrun or Slurm."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    source: str  # "torchrun" or "slurm"


@dataclass
class CheckpointRecord:
    """Timings of one checkpoint save on one rank."""

    step: int
    path: str  # relative to the checkpoint directory
    blocking_s: float = 0.0
    completion_s: float = 0.0
    start_utc: str = ""
    end_utc: str = ""
    rank_bytes: int = 0  # bytes of the files this rank owns in the checkpoint
    files: list[dict] | None = None  # rank 0 only: every file of the checkpoint


@dataclass
class PendingSave:
    """An asynchronous save whose future has not been waited for yet."""

    record: CheckpointRecord
    future: Future
    call_start_s: float  # perf_counter() when async_save was called
    done: dict = field(default_factory=dict)  # set by the future's done callback


def utc_now() -> str:
    """Return the current UTC time as ISO 8601 with a ``Z`` suffix."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _required_int(environ: Mapping[str, str], name: str) -> int:
    value = environ.get(name)
    if value is None or value == "":
        raise RuntimeError(f"environment variable {name} is not set; start this program with torchrun or srun")
    try:
        return int(value)
    except ValueError:
        raise RuntimeError(f"environment variable {name}={value!r} is not an integer") from None


def rank_environment(environ: Mapping[str, str]) -> RankEnvironment:
    """Read rank, world size, local rank and rendezvous address of this process.

    torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT. Under
    ``srun`` those are absent, so the Slurm task variables SLURM_PROCID, SLURM_NTASKS
    and SLURM_LOCALID are used, with MASTER_ADDR and MASTER_PORT set by the job wrapper.

    Raises:
        RuntimeError: neither set of variables is complete.
    """
    if "RANK" in environ and "WORLD_SIZE" in environ:
        source = "torchrun"
        rank = _required_int(environ, "RANK")
        world_size = _required_int(environ, "WORLD_SIZE")
        local_rank = _required_int(environ, "LOCAL_RANK")
    elif "SLURM_PROCID" in environ:
        source = "slurm"
        rank = _required_int(environ, "SLURM_PROCID")
        world_size = _required_int(environ, "SLURM_NTASKS")
        local_rank = _required_int(environ, "SLURM_LOCALID")
    else:
        raise RuntimeError(
            "neither torchrun (RANK, WORLD_SIZE) nor Slurm (SLURM_PROCID) variables are set; "
            "start this program with run_training.py, torchrun or srun"
        )

    master_addr = environ.get("MASTER_ADDR")
    if not master_addr:
        raise RuntimeError("environment variable MASTER_ADDR is not set; run_training.py sets it for srun")
    master_port = _required_int(environ, "MASTER_PORT")

    if not 0 <= rank < world_size:
        raise RuntimeError(f"rank {rank} is outside world size {world_size} (from {source} variables)")
    return RankEnvironment(rank, world_size, local_rank, master_addr, master_port, source)


def select_device(requested: str, local_rank: int) -> torch.device:
    """Return the device of this rank: ``auto``, ``cpu`` or ``cuda``.

    ``auto`` takes CUDA when a GPU is visible. With one GPU visible per task (as Slurm
    binds them with --gpus-per-task) the local rank is reduced modulo the GPU count.
    """
    if requested not in ("auto", "cpu", "cuda"):
        raise ValueError(f"launch.device is {requested!r}; use auto, cpu or cuda")
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(
            "launch.device is cuda but torch.cuda.is_available() is False on "
            f"{socket.gethostname()}; set launch.device to auto or cpu, or run on a GPU node"
        )
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def process_group_backend(mode: str, device: torch.device) -> str:
    """Return the ``init_process_group`` backend for a mode on a device.

    Asynchronous DCP runs its collectives on CPU tensors, so on CUDA the default
    group needs a gloo backend for CPU beside NCCL.
    """
    if device.type == "cpu":
        return "gloo"
    if mode == "dcp_async":
        return "cuda:nccl,cpu:gloo"
    return "nccl"


def init_distributed(env: RankEnvironment, backend: str, device: torch.device) -> None:
    """Join the default process group of the job.

    torchrun's workers connect to its agent's store through ``env://``; Slurm tasks
    rendezvous over TCP at MASTER_ADDR:MASTER_PORT, where rank 0 hosts the store.
    """
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if env.source == "torchrun":
        init_method = "env://"
    else:
        init_method = f"tcp://{env.master_addr}:{env.master_port}"
    dist.init_process_group(backend=backend, init_method=init_method, rank=env.rank, world_size=env.world_size)


def build_model(model_settings: Mapping[str, Any], training: Mapping[str, Any]) -> nn.Module:
    """Build the configured image classification model with freshly initialized weights.

    ``small_vit`` is a ``torchvision.models.VisionTransformer`` with the dimensions from
    ``model.small_vit``. Any other name goes to ``torchvision.models.get_model``.
    ``pretrained: true`` downloads the torchvision default weights (network access
    needed, and ``num_classes`` must match those weights).
    """
    name = model_settings["name"]
    num_classes = int(training["num_classes"])
    image_size = int(training["image_size"])
    if name == "small_vit":
        if model_settings.get("pretrained"):
            raise ValueError("model.pretrained is true but small_vit has no pretrained weights; set it to false")
        dims = model_settings["small_vit"]
        return torchvision.models.VisionTransformer(
            image_size=image_size,
            patch_size=int(dims["patch_size"]),
            num_layers=int(dims["num_layers"]),
            num_heads=int(dims["num_heads"]),
            hidden_dim=int(dims["hidden_dim"]),
            mlp_dim=int(dims["mlp_dim"]),
            num_classes=num_classes,
        )

    kwargs: dict[str, Any] = {"weights": "DEFAULT" if model_settings.get("pretrained") else None,
                              "num_classes": num_classes}
    if name.startswith("vit_"):
        kwargs["image_size"] = image_size
    return torchvision.models.get_model(name, **kwargs)


def wrap_model(model: nn.Module, mode: str, device: torch.device, world_size: int) -> nn.Module:
    """Place the model on the device and wrap it for data parallel training.

    ``torch_save`` uses DDP, so every rank has a full replica and rank 0 can save it
    alone. The DCP modes shard parameters and optimizer state with FSDP2, so every rank
    saves its own shard. A torchvision ViT gets one FSDP unit per encoder block.
    """
    model = model.to(device)
    if mode == "torch_save":
        device_ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    mesh = init_device_mesh(device.type, (world_size,))
    encoder_layers = getattr(getattr(model, "encoder", None), "layers", None)
    if isinstance(encoder_layers, nn.Sequential):
        for block in encoder_layers:
            fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def random_batch(training: Mapping[str, Any], device: torch.device,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Return random RGB images and class labels, because the checkpoint I/O does not depend on real data."""
    batch_size = int(training["batch_size"])
    image_size = int(training["image_size"])
    images = torch.randn(batch_size, 3, image_size, image_size, generator=generator)
    labels = torch.randint(0, int(training["num_classes"]), (batch_size,), generator=generator)
    return images.to(device), labels.to(device)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
               labels: torch.Tensor) -> float:
    """Run one forward, backward and optimizer step and return its duration in seconds."""
    start_s = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()
    if images.device.type == "cuda":
        torch.cuda.synchronize(images.device)
    return time.perf_counter() - start_s


def checkpoint_name(mode: str, step: int) -> str:
    """Return the checkpoint's path relative to the checkpoint directory."""
    return f"step_{step}.pt" if mode == "torch_save" else f"step_{step}"


def owning_rank(file_name: str) -> int | None:
    """Return the rank that writes a checkpoint file, or None for an unknown file name.

    ``__<r>_<n>.distcp`` and ``__<r>.metadata`` belong to rank r. The global
    ``.metadata`` and a ``torch.save`` ``.pt`` file are written by rank 0.
    """
    for pattern in (DISTCP_FILE, RANK_METADATA_FILE):
        match = pattern.match(file_name)
        if match:
            return int(match["rank"])
    if GLOBAL_METADATA_FILE.match(file_name) or file_name.endswith(".pt"):
        return 0
    return None


def list_checkpoint_files(checkpoint_dir: Path, relative_path: str) -> list[dict]:
    """List the files one checkpoint occupies, each with its size and owning rank.

    Returns ``[{"path", "bytes", "rank"}]`` with paths relative to ``checkpoint_dir``,
    sorted by path. ``relative_path`` may name a file (torch.save) or a directory (DCP).
    """
    root = checkpoint_dir / relative_path
    if root.is_file():
        paths = [root]
    else:
        paths = [Path(directory) / name for directory, _, names in os.walk(root) for name in names]

    files = []
    for path in sorted(paths):
        rank = owning_rank(path.name)
        if rank is None:
            log.warning("checkpoint file %s has an unknown name, so its owning rank is unknown", path)
        files.append({"path": path.relative_to(checkpoint_dir).as_posix(), "bytes": os.stat(path).st_size, "rank": rank})
    return files


def rank_bytes(checkpoint_dir: Path, relative_path: str, rank: int) -> int:
    """Return the bytes of the checkpoint's files that ``rank`` wrote."""
    return sum(item["bytes"] for item in list_checkpoint_files(checkpoint_dir, relative_path) if item["rank"] == rank)


def format_bytes(size_bytes: int) -> str:
    """Format a byte count with a decimal unit, such as ``43.5 MB``."""
    value = float(size_bytes)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def _parent_pid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name in brackets may contain spaces; the fields after it do not.
    return int(stat.rsplit(")", 1)[1].split()[1])


def child_pids(pid: int) -> list[int]:
    """Return the live child processes of ``pid`` by scanning ``/proc`` (empty elsewhere)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    children = []
    for entry in proc.iterdir():
        if entry.name.isdigit() and _parent_pid(int(entry.name)) == pid:
            children.append(int(entry.name))
    return sorted(children)


def other_processes() -> list[dict]:
    """List this rank's other processes: the multiprocessing resource tracker and live children.

    Under Darshan every such process writes its own log, so the analysis needs their
    PIDs. The tracker gets role ``resource_tracker``, any other child role ``other``.
    Child processes that have already exited are not seen here.
    """
    pid = os.getpid()
    tracker_pid = getattr(multiprocessing.resource_tracker._resource_tracker, "_pid", None)
    processes = {}
    if tracker_pid is not None:
        processes[tracker_pid] = "resource_tracker"
    for child in child_pids(pid):
        processes.setdefault(child, "other")
    return [{"pid": child, "ppid": pid, "role": role} for child, role in sorted(processes.items())]


def describe_save_error(error: BaseException) -> str:
    """Return a one-line description of a save error, naming each failed rank for DCP errors."""
    if isinstance(error, CheckpointException):
        return "; ".join(f"rank {rank}: {failure[0]!r}" for rank, failure in sorted(error.failures.items()))
    return repr(error)


class Checkpointer:
    """Save checkpoints in one mode and keep a record of each save's timing.

    ``save`` returns once the training loop may continue: after the write for
    ``torch_save`` and ``dcp``, after staging for ``dcp_async``. ``finish`` waits for
    the last asynchronous save. A failed save raises ``CheckpointSaveError``.
    """

    def __init__(self, mode: str, checkpoint_dir: Path, fsync: bool, rank: int) -> None:
        self.mode = mode
        self.checkpoint_dir = checkpoint_dir
        self.fsync = fsync
        self.rank = rank
        self.records: list[CheckpointRecord] = []
        self.pending: PendingSave | None = None
        # Asynchronous saves run their collectives in a background thread. A gloo group
        # of their own keeps them apart from the training loop's collectives.
        self.async_group = dist.new_group(backend="gloo") if mode == "dcp_async" else None

    def save(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Write the checkpoint of ``step`` in this checkpointer's mode."""
        record = CheckpointRecord(step=step, path=checkpoint_name(self.mode, step))
        path = self.checkpoint_dir / record.path
        try:
            if self.mode == "torch_save":
                self._save_torch(record, path, model, optimizer)
            elif self.mode == "dcp":
                self._save_dcp(record, path, model, optimizer)
            else:
                self._save_dcp_async(record, path, model, optimizer)
        except CheckpointSaveError:
            raise
        except SAVE_ERRORS as error:
            raise self._failure(path, error) from error

    def finish(self) -> None:
        """Wait for the last asynchronous save, so that every checkpoint is complete."""
        if self.pending is not None:
            self._complete_pending()

    def _failure(self, path: Path, error: BaseException) -> CheckpointSaveError:
        return CheckpointSaveError(f"{self.mode} checkpoint save failed on rank {self.rank} for {path}: "
                                   f"{describe_save_error(error)}")

    def _save_torch(self, record: CheckpointRecord, path: Path, model: nn.Module,
                    optimizer: torch.optim.Optimizer) -> None:
        start_s = time.perf_counter()
        record.start_utc = utc_now()
        if self.rank == 0:
            state = {"model": model.module.state_dict(), "optimizer": optimizer.state_dict()}
            with open(path, "wb") as stream:
                torch.save(state, stream)
                if self.fsync:
                    stream.flush()
                    os.fsync(stream.fileno())
        dist.barrier()
        record.blocking_s = record.completion_s = time.perf_counter() - start_s
        record.end_utc = utc_now()
        self._complete(record)

    def _save_dcp(self, record: CheckpointRecord, path: Path, model: nn.Module,
                  optimizer: torch.optim.Optimizer) -> None:
        start_s = time.perf_counter()
        record.start_utc = utc_now()
        model_state, optimizer_state = get_state_dict(model, optimizer)
        writer = dcp.FileSystemWriter(path, sync_files=self.fsync, overwrite=True)
        dcp.save({"model": model_state, "optimizer": optimizer_state}, storage_writer=writer)
        record.blocking_s = record.completion_s = time.perf_counter() - start_s
        record.end_utc = utc_now()
        self._complete(record)

    def _save_dcp_async(self, record: CheckpointRecord, path: Path, model: nn.Module,
                        optimizer: torch.optim.Optimizer) -> None:
        start_s = time.perf_counter()
        self.finish()

        call_start_s = time.perf_counter()
        record.start_utc = utc_now()
        model_state, optimizer_state = get_state_dict(model, optimizer)
        writer = dcp.FileSystemWriter(path, sync_files=self.fsync, overwrite=True)
        response = dcp.async_save({"model": model_state, "optimizer": optimizer_state},
                                  storage_writer=writer, process_group=self.async_group)
        # torch 2.14 returns an AsyncSaveResponse instead when the stager stages asynchronously.
        future = getattr(response, "upload_completion", response)

        pending = PendingSave(record=record, future=future, call_start_s=call_start_s)
        future.add_done_callback(lambda _: pending.done.update(end_s=time.perf_counter(), end_utc=utc_now()))
        self.pending = pending
        record.blocking_s = time.perf_counter() - start_s

    def _complete_pending(self) -> None:
        pending, self.pending = self.pending, None
        path = self.checkpoint_dir / pending.record.path
        try:
            pending.future.result()
        except SAVE_ERRORS as error:
            raise self._failure(path, error) from error
        # A future wakes its waiters before it runs its done callbacks, so result() can
        # return first. Then the completion time is now, within a thread switch.
        if "end_s" not in pending.done:
            pending.done.update(end_s=time.perf_counter(), end_utc=utc_now())
        pending.record.completion_s = pending.done["end_s"] - pending.call_start_s
        pending.record.end_utc = pending.done["end_utc"]
        self._complete(pending.record)

    def _complete(self, record: CheckpointRecord) -> None:
        """Measure a completed checkpoint on disk, log it and keep its record."""
        record.rank_bytes = rank_bytes(self.checkpoint_dir, record.path, self.rank)
        if self.rank == 0:
            record.files = list_checkpoint_files(self.checkpoint_dir, record.path)

        if self.mode == "torch_save" and self.rank != 0:
            log.info("checkpoint step %d saved by rank 0: this rank blocked %.3f s", record.step, record.blocking_s)
        elif self.mode == "dcp_async":
            log.info("checkpoint step %d saved: %s in %.3f s blocking, %.3f s until complete",
                     record.step, format_bytes(record.rank_bytes), record.blocking_s, record.completion_s)
        else:
            log.info("checkpoint step %d saved: %s in %.3f s blocking",
                     record.step, format_bytes(record.rank_bytes), record.blocking_s)
        self.records.append(record)


def checkpoint_steps(steps: int, interval: int) -> list[int]:
    """Return the 1-based steps after which a checkpoint is written."""
    if steps < 1 or interval < 1:
        raise ValueError(f"training.steps ({steps}) and training.checkpoint_interval ({interval}) must be at least 1")
    return [step for step in range(1, steps + 1) if step % interval == 0]


def write_json_atomically(path: Path, data: Any) -> None:
    """Write JSON to a temporary file and rename it, so readers never see a partial file."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(temporary, path)


def run(mode: str, settings: Mapping[str, Any], environ: Mapping[str, str]) -> dict:
    """Join the process group, train, checkpoint and return this rank's record.

    Raises:
        CheckpointSaveError: a save failed.
    """
    phases_s: dict[str, float] = {}
    start_s = time.perf_counter()
    env = rank_environment(environ)
    training = settings["training"]
    device = select_device(settings["launch"]["device"], env.local_rank)
    backend = process_group_backend(mode, device)
    init_distributed(env, backend, device)
    phases_s["init_process_group"] = time.perf_counter() - start_s
    log.info("rank %d of %d on %s: device %s, backend %s, mode %s",
             env.rank, env.world_size, socket.gethostname(), device, backend, mode)

    phase_start_s = time.perf_counter()
    torch.manual_seed(int(training["seed"]))  # same initial weights on every rank
    model = wrap_model(build_model(settings["model"], training), mode, device, env.world_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=float(training["learning_rate"]))
    generator = torch.Generator().manual_seed(int(training["seed"]) * 100003 + env.rank)
    phases_s["build_model"] = time.perf_counter() - phase_start_s

    checkpoint_dir = Path(settings["checkpoint"]["dir"])
    checkpointer = Checkpointer(mode, checkpoint_dir, bool(settings["checkpoint"]["fsync"]), env.rank)
    save_at = set(checkpoint_steps(int(training["steps"]), int(training["checkpoint_interval"])))
    other_pids: dict[int, dict] = {}

    phase_start_s = time.perf_counter()
    train_step_s = []
    for step in range(1, int(training["steps"]) + 1):
        images, labels = random_batch(training, device, generator)
        train_step_s.append(train_step(model, optimizer, images, labels))
        if step in save_at:
            checkpointer.save(step, model, optimizer)
            other_pids.update({item["pid"]: item for item in other_processes()})
    checkpointer.finish()
    other_pids.update({item["pid"]: item for item in other_processes()})
    phases_s["train_and_checkpoint"] = time.perf_counter() - phase_start_s

    dist.barrier()
    phases_s["total"] = time.perf_counter() - start_s
    return {
        "rank": env.rank,
        "world_size": env.world_size,
        "local_rank": env.local_rank,
        "rank_environment": env.source,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "mode": mode,
        "device": str(device),
        "backend": backend,
        "checkpoint_dir": str(checkpoint_dir),
        "checkpoints": [asdict(record) for record in checkpointer.records],
        "train_step_s": train_step_s,
        "phases_s": phases_s,
        "other_pids": list(other_pids.values()),
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__, "cuda": torch.version.cuda},
    }


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line that run_training.py builds."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--mode", required=True, choices=MODES, help="checkpoint mode")
    parser.add_argument("--settings-file", required=True, type=Path,
                        help="JSON file with the job settings (run_training.py writes it)")
    parser.add_argument("--output-dir", required=True, type=Path,
                        help="job output directory; this rank writes ranks/rank<k>.json in it")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run one rank, write its record and return 0 once every save completed."""
    arguments = parse_arguments(argv)
    rank = os.environ.get("RANK", os.environ.get("SLURM_PROCID", "?"))
    logging.basicConfig(level=logging.INFO,
                        format=f"%(asctime)s rank {rank} %(levelname)s %(name)s: %(message)s")
    settings = json.loads(arguments.settings_file.read_text())

    record = run(arguments.mode, settings, os.environ)
    write_json_atomically(arguments.output_dir / "ranks" / f"rank{record['rank']}.json", record)

    # Only after success: a rank that failed exits with its error, and the launcher
    # (torchrun, or srun --kill-on-bad-exit) ends the ranks still waiting on it.
    dist.destroy_process_group()
    log.info("rank %d finished: %d checkpoints saved", record["rank"], len(record["checkpoints"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
