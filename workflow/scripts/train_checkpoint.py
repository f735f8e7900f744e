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
* ``dcp_async_process``: as ``dcp_async`` with ``AsyncCheckpointerType.PROCESS``: one
  background writer process per rank writes the shards, from a ``DefaultStager`` copy
  of the state in shared (with CUDA also pinned) memory. The writer is shut down
  before the rank exits, so that it leaves its Darshan log.

After the last save every mode restores its last checkpoint the way it would resume
(``torch.load`` on rank 0 and a broadcast, or ``dcp.load`` on every rank), after
evicting the files from the page cache, and compares every restored tensor with a
CPU copy of the state taken when that save was requested.

Every rank writes what it did and how long each save took to
``<output_dir>/ranks/rank<k>.json``, which ``run_training.py`` merges into the manifest.
While it runs, ``ranks/rank<k>.progress.json`` names its current phase, step and
checkpoint path, so that the wrapper can name the checkpoint a killed rank was in.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import mmap
import multiprocessing.resource_tracker
import os
import re
import signal
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
from torch.distributed.checkpoint import _async_process_executor
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.checkpoint.state_dict_saver import AsyncCheckpointerType
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

log = logging.getLogger("train_checkpoint")

MODES = ("torch_save", "dcp", "dcp_async", "dcp_async_process")
ASYNC_MODES = ("dcp_async", "dcp_async_process")

# Restore method of each mode, as the manifest records it.
RESTORE_METHODS = {
    "torch_save": "torch.load on rank 0, then a broadcast of every tensor to all ranks",
    "dcp": "dcp.load on every rank into its sharded state dict, then set_state_dict",
    "dcp_async": "dcp.load on every rank into its sharded state dict, then set_state_dict",
    "dcp_async_process": "dcp.load on every rank into its sharded state dict, then set_state_dict",
}

# Seconds the background writer of dcp_async_process gets to exit after the request
# to stop: its Darshan runtime writes the process's log on the way out.
WRITER_STOP_TIMEOUT_S = 120.0

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


class CheckpointRestoreError(RuntimeError):
    """Raised when restoring the last checkpoint fails; the message names mode, rank and path."""


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
    # Parts of blocking_s: training_state() (get_state_dict for DCP) and the save call
    # (torch.save with fsync on rank 0, dcp.save, or async_save's staging and hand-off).
    state_dict_s: float = 0.0
    save_call_s: float = 0.0
    rank_bytes: int = 0  # bytes of the files this rank owns in the checkpoint
    files: list[dict] | None = None  # rank 0 only: every file of the checkpoint
    complete: bool = False  # the save finished on this rank


@dataclass
class PendingSave:
    """An asynchronous save whose future has not been waited for yet."""

    record: CheckpointRecord
    future: Future
    call_start_s: float  # perf_counter() when async_save was called
    done: dict = field(default_factory=dict)  # set by the future's done callback


@dataclass(frozen=True)
class TensorSlot:
    """Placeholder for the tensor at ``index`` while a state's structure is broadcast without its data."""

    index: int
    shape: tuple[int, ...]
    dtype: torch.dtype


class Progress:
    """This rank's current phase, step and checkpoint path, kept in a small JSON file.

    A rank killed by a signal cannot report its own failure; the job wrapper reads
    the last phase written here to name the checkpoint and path the rank was in.
    """

    def __init__(self, path: Path | None, rank: int, mode: str) -> None:
        self.path = path
        self.state: dict[str, Any] = {"rank": rank, "pid": os.getpid(), "mode": mode, "phase": "starting",
                                      "step": None, "checkpoint": None, "last_complete_step": None,
                                      "error": None, "utc": utc_now()}
        self._writing = False

    def update(self, **changes: Any) -> None:
        """Record the changes and rewrite the file atomically; a call from a signal handler during a write is skipped."""
        if self._writing:
            return
        self.state.update(changes, utc=utc_now())
        if self.path is None:
            return
        self._writing = True
        try:
            write_json_atomically(self.path, self.state)
        finally:
            self._writing = False


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
    if mode in ASYNC_MODES:
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


def other_processes(writer_pid: int | None = None) -> list[dict]:
    """List this rank's other processes: the multiprocessing resource tracker and live children.

    Under Darshan every such process writes its own log, so the analysis needs their
    PIDs. The tracker gets role ``resource_tracker``, the background writer of
    process-based async_save (``writer_pid``) role ``checkpoint_writer``, any other
    child role ``other``. Child processes that have already exited are not seen here.
    """
    pid = os.getpid()
    tracker_pid = getattr(multiprocessing.resource_tracker._resource_tracker, "_pid", None)
    processes = {}
    if tracker_pid is not None:
        processes[tracker_pid] = "resource_tracker"
    if writer_pid is not None:
        processes[writer_pid] = "checkpoint_writer"
    for child in child_pids(pid):
        processes.setdefault(child, "other")
    return [{"pid": child, "ppid": pid, "role": role} for child, role in sorted(processes.items())]


def describe_save_error(error: BaseException) -> str:
    """Return a one-line description of a save error, naming each failed rank for DCP errors."""
    if isinstance(error, CheckpointException):
        return "; ".join(f"rank {rank}: {failure[0]!r}" for rank, failure in sorted(error.failures.items()))
    return repr(error)


# ---- background writer and staging of dcp_async_process ---------------------------

def make_stager(mode: str, device: torch.device) -> tuple[DefaultStager | None, dict | None]:
    """Return the stager a mode passes to async_save and the manifest's description of its staging.

    ``dcp_async_process`` stages with a ``DefaultStager`` into shared memory, which
    the writer process maps without a copy, and into pinned memory where CUDA makes
    that possible: pinning page-locks host memory for fast copies from the GPU, and
    torch only pins with CUDA available. Staging is synchronous, so the training
    loop never changes a tensor that is still being copied.
    """
    if mode == "dcp_async":
        return None, {"stager": "BlockingAsyncStager of FileSystemWriter (a CPU copy per save)",
                      "pinned_memory": False, "shared_memory": False,
                      "reason": "thread-based async_save stages with the writer's default copy"}
    if mode != "dcp_async_process":
        return None, None
    pinned = device.type == "cuda" and torch.cuda.is_available()
    options = StagingOptions(use_pinned_memory=pinned, use_shared_memory=True, use_async_staging=False,
                             use_non_blocking_copy=pinned)
    reason = None if pinned else (
        f"pinned memory needs CUDA, and this rank runs on {device} with torch.cuda.is_available() "
        f"{torch.cuda.is_available()}, so the state was staged into shared pageable memory instead")
    info = {"stager": "DefaultStager", "pinned_memory_requested": True, "pinned_memory": pinned,
            "shared_memory": True, "async_staging": False, "reason": reason}
    return DefaultStager(options), info


def background_writer_pid() -> int | None:
    """Return the PID of the process that process-based async_save writes in, or None before its first save.

    torch 2.14 keeps that process in the private module global
    ``_async_process_executor._CHECKPOINT_PROCESS`` and has no public accessor.
    """
    holder = getattr(_async_process_executor, "_CHECKPOINT_PROCESS", None)
    process = getattr(holder, "_save_process", None)
    return process.pid if process is not None else None


def close_background_writer(timeout_s: float) -> dict | None:
    """Stop the background writer of process-based async_save and wait until it has exited.

    The writer exits cleanly only on DCP's TERMINATE request; left alone, it gets
    SIGTERM from multiprocessing at interpreter exit, and a process ended by a
    signal leaves no Darshan log. torch 2.14 sends that request only from the
    holder's ``__del__``, which sends SIGTERM after 5 s, so this sends it itself and
    waits ``timeout_s`` for the writer to finish its log.

    Returns the writer's PID, exit code and how it stopped, or None when no writer ran.
    """
    holder = getattr(_async_process_executor, "_CHECKPOINT_PROCESS", None)
    if holder is None:
        return None
    process = holder._save_process
    stopped_by = "had already exited"
    if process.is_alive():
        holder._send(_async_process_executor._CheckpointSaveProcessControlOpts.TERMINATE)
        process.join(timeout_s)
        stopped_by = "terminate request"
    if process.is_alive():
        log.warning("background checkpoint writer %d did not exit %.0f s after the terminate request; sending "
                    "SIGTERM, so it leaves no Darshan log", process.pid, timeout_s)
        process.terminate()
        process.join()
        stopped_by = f"SIGTERM after {timeout_s:.0f} s"
    _async_process_executor._CHECKPOINT_PROCESS = None
    log.info("background checkpoint writer %d stopped (%s), exit code %s", process.pid, stopped_by, process.exitcode)
    return {"pid": process.pid, "exit_code": process.exitcode, "stopped_by": stopped_by}


class PausingFileSystemWriter(dcp.FileSystemWriter):
    """A FileSystemWriter that sleeps before writing this rank's data.

    Only the test-only setting ``testing.pause_in_save`` uses it, so that a test can
    kill a rank while it is inside a save.
    """

    def __init__(self, *args: Any, pause_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pause_s = pause_s

    def write_data(self, plan: Any, planner: Any) -> Any:
        """Sleep ``pause_s`` seconds, then write as FileSystemWriter does."""
        log.warning("pausing %.0f s inside the save (testing.pause_in_save)", self.pause_s)
        time.sleep(self.pause_s)
        return super().write_data(plan, planner)


# ---- state snapshots and integrity -------------------------------------------------

def training_state(mode: str, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Return the state a checkpoint of ``mode`` holds: full replicas for torch_save, this rank's shards for DCP."""
    if mode == "torch_save":
        return {"model": model.module.state_dict(), "optimizer": optimizer.state_dict()}
    model_state, optimizer_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optimizer": optimizer_state}


def flatten_tensors(state: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Map every tensor of a nested state dict to its path, such as ``optimizer/state/3/exp_avg``.

    A DTensor contributes its local shard, which is what this rank saves and loads.
    Values that are not tensors (learning rates, parameter names) are left out.
    """
    if isinstance(state, DTensor):
        return {prefix: state.to_local()}
    if isinstance(state, torch.Tensor):
        return {prefix: state}
    if isinstance(state, Mapping):
        items = state.items()
    elif isinstance(state, (list, tuple)):
        items = enumerate(state)
    else:
        return {}
    flat: dict[str, torch.Tensor] = {}
    for key, value in items:
        flat.update(flatten_tensors(value, f"{prefix}/{key}" if prefix else str(key)))
    return flat


def snapshot_state(state: Any) -> dict[str, torch.Tensor]:
    """Copy every tensor of a state dict to the CPU, so that later training steps cannot change the copy."""
    return {name: tensor.detach().to("cpu", copy=True) for name, tensor in flatten_tensors(state).items()}


def same_bits(expected: torch.Tensor, actual: torch.Tensor) -> bool:
    """Return whether two tensors have the same shape, dtype and bytes (NaN equals an identical NaN)."""
    if expected.shape != actual.shape or expected.dtype != actual.dtype:
        return False
    as_bytes = [tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8) for tensor in (expected, actual)]
    return torch.equal(*as_bytes)


def compare_states(expected: Mapping[str, torch.Tensor], actual: Mapping[str, torch.Tensor]) -> list[str]:
    """Return, sorted, the names of tensors that differ in shape, dtype or any bit, or that one side lacks."""
    return [name for name in sorted(set(expected) | set(actual))
            if name not in expected or name not in actual or not same_bits(expected[name], actual[name])]


# ---- page cache -----------------------------------------------------------------------

def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
    return libc


def resident_bytes(fd: int, size_bytes: int) -> int:
    """Return how many bytes of an open file are in this node's page cache, from mincore(2).

    Raises:
        OSError: mmap or mincore failed.
    """
    if size_bytes == 0:
        return 0
    libc = _libc()
    address = libc.mmap(None, size_bytes, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    if address in (None, ctypes.c_void_p(-1).value):
        error = ctypes.get_errno()
        raise OSError(error, f"mmap for mincore failed: {os.strerror(error)}")
    page_bytes = mmap.PAGESIZE
    pages = (size_bytes + page_bytes - 1) // page_bytes
    vector = (ctypes.c_ubyte * pages)()
    try:
        if libc.mincore(address, size_bytes, vector) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"mincore failed: {os.strerror(error)}")
    finally:
        libc.munmap(address, size_bytes)
    return min(sum(page & 1 for page in vector) * page_bytes, size_bytes)


def drop_page_cache(paths: list[Path], fsync: bool) -> dict:
    """Evict files from this node's page cache, so that a restore reads them from the file system.

    ``POSIX_FADV_DONTNEED`` evicts only clean pages and needs no root. ``fsync`` first
    syncs files whose save did not (checkpoint.fsync false). mincore(2) measures
    what is resident before and after; ``dropped`` is false when pages stayed.
    """
    before = after = 0
    errors = []
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as error:
            errors.append(f"{path}: {error}")
            continue
        try:
            size_bytes = os.fstat(fd).st_size
            if fsync:
                os.fsync(fd)
            before += resident_bytes(fd, size_bytes)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            after += resident_bytes(fd, size_bytes)
        except OSError as error:
            errors.append(f"{path}: {error}")
        finally:
            os.close(fd)
    return {"files": len(paths), "fsync_first": fsync, "resident_bytes_before": before,
            "resident_bytes_after": after, "dropped": not errors and after == 0, "errors": errors}


# ---- restore ----------------------------------------------------------------------------

def split_tensors(state: Any, tensors: list[torch.Tensor]) -> Any:
    """Return the state with each tensor replaced by a TensorSlot, appending the tensors to ``tensors``."""
    if isinstance(state, torch.Tensor):
        tensors.append(state)
        return TensorSlot(len(tensors) - 1, tuple(state.shape), state.dtype)
    if isinstance(state, Mapping):
        return {key: split_tensors(value, tensors) for key, value in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(split_tensors(value, tensors) for value in state)
    return state


def join_tensors(skeleton: Any, tensors: list[torch.Tensor]) -> Any:
    """Put the tensors back where split_tensors left TensorSlots."""
    if isinstance(skeleton, TensorSlot):
        return tensors[skeleton.index]
    if isinstance(skeleton, Mapping):
        return {key: join_tensors(value, tensors) for key, value in skeleton.items()}
    if isinstance(skeleton, (list, tuple)):
        return type(skeleton)(join_tensors(value, tensors) for value in skeleton)
    return skeleton


def tensor_slots(skeleton: Any) -> list[TensorSlot]:
    """List the TensorSlots of a skeleton in index order."""
    if isinstance(skeleton, TensorSlot):
        return [skeleton]
    if isinstance(skeleton, Mapping):
        values = list(skeleton.values())
    elif isinstance(skeleton, (list, tuple)):
        values = list(skeleton)
    else:
        return []
    return sorted((slot for value in values for slot in tensor_slots(value)), key=lambda slot: slot.index)


def broadcast_state(state: Any, rank: int, device: torch.device) -> Any:
    """Send rank 0's state to every rank: its structure as one object, then each tensor by dist.broadcast.

    The tensors go through the collective backend without pickling, so the cost
    grows like a parameter broadcast rather than like a pickled copy.
    """
    tensors: list[torch.Tensor] = []
    objects = [split_tensors(state, tensors) if rank == 0 else None]
    dist.broadcast_object_list(objects, src=0)
    skeleton = objects[0]
    if rank == 0:
        received = [tensor.to(device).contiguous() for tensor in tensors]
    else:
        received = [torch.empty(slot.shape, dtype=slot.dtype, device=device) for slot in tensor_slots(skeleton)]
    for tensor in received:
        dist.broadcast(tensor, src=0)
    return join_tensors(skeleton, received)


def unloaded_like(state: Any) -> Any:
    """Return a copy of a state dict's structure with NaN (integers: 0) tensors of the same shape and sharding.

    DCP loads into these, so a tensor the load skipped cannot pass the integrity
    check by still holding the live value.
    """
    if isinstance(state, torch.Tensor):
        if state.is_floating_point():
            return torch.full_like(state, float("nan"))
        return torch.zeros_like(state)
    if isinstance(state, Mapping):
        return {key: unloaded_like(value) for key, value in state.items()}
    if isinstance(state, list):
        return [unloaded_like(value) for value in state]
    return state


def restore_torch_save(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, rank: int,
                       device: torch.device) -> dict:
    """Load a torch.save checkpoint as a DDP job resumes: rank 0 reads it, every rank gets it by broadcast."""
    state = torch.load(path, map_location="cpu", weights_only=True) if rank == 0 else None
    state = broadcast_state(state, rank, device)
    model.module.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return state


def restore_dcp(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Load a DCP checkpoint as an FSDP2 job resumes: every rank reads its shards into its sharded state dict."""
    model_state, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": unloaded_like(model_state), "optimizer": unloaded_like(optimizer_state)}
    dcp.load(state, storage_reader=dcp.FileSystemReader(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    return state


def restore_files(mode: str, checkpoint_dir: Path, relative_path: str, rank: int) -> list[Path]:
    """Return the files ``rank`` reads to restore a checkpoint: its own, and for DCP also the global .metadata.

    This holds because the job restores with the world size and sharding it saved
    with, so each rank's load plan covers exactly the shard file it wrote.
    """
    files = list_checkpoint_files(checkpoint_dir, relative_path)
    return [checkpoint_dir / item["path"] for item in files
            if item["rank"] == rank or (mode != "torch_save" and GLOBAL_METADATA_FILE.match(Path(item["path"]).name))]


class Checkpointer:
    """Save checkpoints in one mode, keep a record of each save's timing and restore the last one.

    ``save`` returns once the training loop may continue: after the write for
    ``torch_save`` and ``dcp``, after staging for the async modes. ``close`` waits for
    the last asynchronous save and stops the background writer process. A failed
    save raises ``CheckpointSaveError``. The save of ``verify_step`` keeps a CPU copy
    of the state it was asked to save, for the integrity check after the restore.
    """

    def __init__(self, mode: str, checkpoint_dir: Path, fsync: bool, rank: int, *,
                 device: torch.device = torch.device("cpu"), verify_step: int | None = None,
                 progress: Progress | None = None, pause: Mapping[str, Any] | None = None,
                 dcp_threads: int = 1) -> None:
        self.mode = mode
        self.checkpoint_dir = checkpoint_dir
        self.fsync = fsync
        self.dcp_threads = dcp_threads
        self.rank = rank
        self.device = device
        self.verify_step = verify_step
        self.progress = progress or Progress(None, rank, mode)
        self.pause = dict(pause or {})
        self.records: list[CheckpointRecord] = []
        self.pending: PendingSave | None = None
        self.expected_state: dict[str, torch.Tensor] | None = None
        self.writer: dict | None = None
        # Asynchronous saves run their collectives in a background thread. A gloo group
        # of their own keeps them apart from the training loop's collectives.
        self.async_group = dist.new_group(backend="gloo") if mode in ASYNC_MODES else None
        self.stager, self.staging = make_stager(mode, device)

    def save(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Write the checkpoint of ``step`` in this checkpointer's mode."""
        record = CheckpointRecord(step=step, path=checkpoint_name(self.mode, step))
        path = self.checkpoint_dir / record.path
        # torch_save writes rank 0's replica only, so only rank 0 needs the copy.
        if step == self.verify_step and (self.mode != "torch_save" or self.rank == 0):
            self.expected_state = snapshot_state(training_state(self.mode, model, optimizer))
        # The copy is not part of the save: every rank starts timing the save after it,
        # so no rank's save time includes waiting for another rank's copy.
        if step == self.verify_step and dist.is_initialized() and dist.get_world_size() > 1:
            dist.barrier()
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

    def close(self) -> None:
        """Wait for the last save, release the stager and stop the background writer process."""
        self.finish()
        if self.stager is not None:
            self.stager.close()
            self.stager = None
        if self.mode == "dcp_async_process":
            self.writer = close_background_writer(WRITER_STOP_TIMEOUT_S)

    def restore_last(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
        """Restore the last checkpoint the way this mode resumes, time it and check its integrity.

        Every rank first evicts the files it will read from the page cache and waits
        for the others, so the timed load reads from the file system.
        """
        record = self.records[-1]
        path = self.checkpoint_dir / record.path
        self.progress.update(phase="restoring", step=record.step, checkpoint=str(path))
        files = restore_files(self.mode, self.checkpoint_dir, record.path, self.rank)
        page_cache = drop_page_cache(files, fsync=not self.fsync)
        dist.barrier()
        start_s = time.perf_counter()
        try:
            if self.mode == "torch_save":
                state = restore_torch_save(path, model, optimizer, self.rank, self.device)
            else:
                state = restore_dcp(path, model, optimizer)
        except SAVE_ERRORS as error:
            raise CheckpointRestoreError(f"{self.mode} restore of checkpoint step {record.step} failed on rank "
                                         f"{self.rank} for {path}: {describe_save_error(error)}") from error
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        load_s = time.perf_counter() - start_s

        checked = self.expected_state is not None and record.step == self.verify_step
        differing = compare_states(self.expected_state, flatten_tensors(state)) if checked else []
        replicated_buffers = []
        if self.mode != "torch_save":
            # FSDP leaves buffers such as BatchNorm's running statistics unsharded and
            # unsynchronised, and DCP saves one rank's copy of a replicated tensor, so the
            # other ranks restore that copy: counted apart, not as a mismatch.
            buffer_names = {f"model/{name}" for name, _ in model.named_buffers()}
            replicated_buffers = [name for name in differing if name in buffer_names]
            differing = [name for name in differing if name not in buffer_names]
        log.info("restored checkpoint step %d in %.3f s (%s); page cache %s; integrity %s", record.step, load_s,
                 format_bytes(sum(os.stat(file).st_size for file in files)),
                 "dropped" if page_cache["dropped"] else f"not dropped ({page_cache})",
                 f"{len(differing)} of {len(self.expected_state)} tensors differ" if checked else "not checked on this rank")
        return {
            "step": record.step,
            "path": record.path,
            "method": RESTORE_METHODS[self.mode],
            "load_s": load_s,
            "files": [file.relative_to(self.checkpoint_dir).as_posix() for file in files],
            "bytes": sum(os.stat(file).st_size for file in files),
            "page_cache": page_cache,
            "integrity": {"checked": checked, "tensors_checked": len(self.expected_state) if checked else 0,
                          "differing": differing, "replicated_buffers_from_other_rank": replicated_buffers},
        }

    def _failure(self, path: Path, error: BaseException) -> CheckpointSaveError:
        return CheckpointSaveError(f"{self.mode} checkpoint save failed on rank {self.rank} for {path}: "
                                   f"{describe_save_error(error)}")

    def _pause_s(self, step: int) -> float:
        """Return the seconds to sleep inside this rank's save of ``step`` (test-only setting testing.pause_in_save)."""
        if self.pause.get("rank") == self.rank and self.pause.get("step") == step:
            return float(self.pause.get("seconds", 0))
        return 0.0

    def _make_writer(self, path: Path, step: int) -> dcp.FileSystemWriter:
        pause_s = self._pause_s(step)
        if pause_s > 0:
            return PausingFileSystemWriter(path, sync_files=self.fsync, overwrite=True, pause_s=pause_s,
                                           thread_count=self.dcp_threads)
        return dcp.FileSystemWriter(path, sync_files=self.fsync, overwrite=True, thread_count=self.dcp_threads)

    def _save_torch(self, record: CheckpointRecord, path: Path, model: nn.Module,
                    optimizer: torch.optim.Optimizer) -> None:
        self.progress.update(phase="saving", step=record.step, checkpoint=str(path))
        pause_s = self._pause_s(record.step)
        start_s = time.perf_counter()
        record.start_utc = utc_now()
        if self.rank == 0:
            state = training_state(self.mode, model, optimizer)
            call_start_s = time.perf_counter()
            record.state_dict_s = call_start_s - start_s
            with open(path, "wb") as stream:
                torch.save(state, stream)
                if pause_s > 0:
                    log.warning("pausing %.0f s inside the save (testing.pause_in_save)", pause_s)
                    time.sleep(pause_s)
                if self.fsync:
                    stream.flush()
                    os.fsync(stream.fileno())
            record.save_call_s = time.perf_counter() - call_start_s
        elif pause_s > 0:
            log.warning("pausing %.0f s inside the save (testing.pause_in_save)", pause_s)
            time.sleep(pause_s)
        dist.barrier()
        record.blocking_s = record.completion_s = time.perf_counter() - start_s
        record.end_utc = utc_now()
        self._complete(record)

    def _save_dcp(self, record: CheckpointRecord, path: Path, model: nn.Module,
                  optimizer: torch.optim.Optimizer) -> None:
        self.progress.update(phase="saving", step=record.step, checkpoint=str(path))
        start_s = time.perf_counter()
        record.start_utc = utc_now()
        state = training_state(self.mode, model, optimizer)
        call_start_s = time.perf_counter()
        record.state_dict_s = call_start_s - start_s
        dcp.save(state, storage_writer=self._make_writer(path, record.step))
        record.save_call_s = time.perf_counter() - call_start_s
        record.blocking_s = record.completion_s = time.perf_counter() - start_s
        record.end_utc = utc_now()
        self._complete(record)

    def _save_dcp_async(self, record: CheckpointRecord, path: Path, model: nn.Module,
                        optimizer: torch.optim.Optimizer) -> None:
        start_s = time.perf_counter()
        self.finish()
        self.progress.update(phase="saving", step=record.step, checkpoint=str(path))

        call_start_s = time.perf_counter()
        record.start_utc = utc_now()
        state = training_state(self.mode, model, optimizer)
        async_call_start_s = time.perf_counter()
        record.state_dict_s = async_call_start_s - call_start_s
        options: dict[str, Any] = {}
        if self.mode == "dcp_async_process":
            options = {"async_checkpointer_type": AsyncCheckpointerType.PROCESS, "async_stager": self.stager}
        response = dcp.async_save(state, storage_writer=self._make_writer(path, record.step),
                                  process_group=self.async_group, **options)
        # torch 2.14 returns an AsyncSaveResponse instead when the stager stages asynchronously.
        future = getattr(response, "upload_completion", response)
        record.save_call_s = time.perf_counter() - async_call_start_s

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
        record.complete = True
        if self.rank == 0:
            record.files = list_checkpoint_files(self.checkpoint_dir, record.path)

        if self.mode == "torch_save" and self.rank != 0:
            log.info("checkpoint step %d saved by rank 0: this rank blocked %.3f s", record.step, record.blocking_s)
        elif self.mode in ASYNC_MODES:
            log.info("checkpoint step %d saved: %s in %.3f s blocking (state dict %.3f s, async_save call %.3f s), "
                     "%.3f s until complete", record.step, format_bytes(record.rank_bytes), record.blocking_s,
                     record.state_dict_s, record.save_call_s, record.completion_s)
        else:
            log.info("checkpoint step %d saved: %s in %.3f s blocking (state dict %.3f s, save call %.3f s)",
                     record.step, format_bytes(record.rank_bytes), record.blocking_s, record.state_dict_s,
                     record.save_call_s)
        self.records.append(record)
        self.progress.update(phase="training", last_complete_step=record.step)


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


def run(mode: str, settings: Mapping[str, Any], environ: Mapping[str, str], progress: Progress | None = None) -> dict:
    """Join the process group, train, checkpoint, restore the last checkpoint and return this rank's record.

    Raises:
        CheckpointSaveError: a save failed.
        CheckpointRestoreError: the restore of the last checkpoint failed.
    """
    phases_s: dict[str, float] = {}
    start_s = time.perf_counter()
    env = rank_environment(environ)
    progress = progress or Progress(None, env.rank, mode)
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
    save_at = checkpoint_steps(int(training["steps"]), int(training["checkpoint_interval"]))
    checkpointer = Checkpointer(mode, checkpoint_dir, bool(settings["checkpoint"]["fsync"]), env.rank, device=device,
                                verify_step=save_at[-1] if save_at else None, progress=progress,
                                pause=(settings.get("testing") or {}).get("pause_in_save"),
                                dcp_threads=int(settings["checkpoint"].get("dcp_threads", 1)))
    other_pids: dict[int, dict] = {}

    phase_start_s = time.perf_counter()
    train_step_s = []
    progress.update(phase="training")
    for step in range(1, int(training["steps"]) + 1):
        images, labels = random_batch(training, device, generator)
        train_step_s.append(train_step(model, optimizer, images, labels))
        if step in save_at:
            checkpointer.save(step, model, optimizer)
            other_pids.update({item["pid"]: item for item in other_processes(background_writer_pid())})
    other_pids.update({item["pid"]: item for item in other_processes(background_writer_pid())})
    checkpointer.close()
    if checkpointer.writer is not None:
        other_pids[checkpointer.writer["pid"]] = {"pid": checkpointer.writer["pid"], "ppid": os.getpid(),
                                                  "role": "checkpoint_writer",
                                                  "exit_code": checkpointer.writer["exit_code"]}
    phases_s["train_and_checkpoint"] = time.perf_counter() - phase_start_s

    phase_start_s = time.perf_counter()
    restore = checkpointer.restore_last(model, optimizer) if checkpointer.records else None
    phases_s["restore"] = time.perf_counter() - phase_start_s

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
        "restore": restore,
        "staging": checkpointer.staging,
        "background_writer": checkpointer.writer,
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


def stop_on_sigterm(progress: Progress) -> None:
    """Make SIGTERM (from the launcher, when another rank failed) a clean exit recorded in the progress file.

    A clean exit also lets Darshan write this process's log, which a process ended
    by the signal's default action never does.
    """
    def handler(signal_number: int, _frame: Any) -> None:
        name = signal.Signals(signal_number).name
        progress.update(phase="terminated", during=progress.state["phase"],
                        error=f"stopped by {name}, which the launcher sends when another rank has failed")
        raise SystemExit(128 + signal_number)

    signal.signal(signal.SIGTERM, handler)


def main(argv: list[str] | None = None) -> int:
    """Run one rank, write its record and return 0 once every save and the restore completed."""
    arguments = parse_arguments(argv)
    rank = os.environ.get("RANK", os.environ.get("SLURM_PROCID", "?"))
    logging.basicConfig(level=logging.INFO,
                        format=f"%(asctime)s rank {rank} %(levelname)s %(name)s: %(message)s")
    settings = json.loads(arguments.settings_file.read_text())
    env = rank_environment(os.environ)
    progress = Progress(arguments.output_dir / "ranks" / f"rank{env.rank}.progress.json", env.rank, arguments.mode)
    stop_on_sigterm(progress)

    try:
        record = run(arguments.mode, settings, os.environ, progress)
    except SAVE_ERRORS as error:
        progress.update(phase="failed", during=progress.state["phase"], error=str(error) or repr(error))
        raise
    write_json_atomically(arguments.output_dir / "ranks" / f"rank{record['rank']}.json", record)
    progress.update(phase="finished")

    # Only after success: a rank that failed exits with its error, and the launcher
    # (torchrun, or srun --kill-on-bad-exit) ends the ranks still waiting on it.
    dist.destroy_process_group()
    log.info("rank %d finished: %d checkpoints saved, the last one restored", record["rank"], len(record["checkpoints"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
