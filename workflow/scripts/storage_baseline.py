"""Measure the checkpoint file system's own sequential write and read bandwidth.

The baseline job runs the same ranks as a training job, launched the same way
(torchrun or srun). Each rank writes its share of a checkpoint to its own file in
large sequential writes, fsyncs and closes it. Then it drops the file's pages from
the page cache and reads the file back. Ranks start each phase
together on a barrier, and a phase lasts until the last rank is done, as a
checkpoint does. The bandwidth of each mode is then judged as a fraction of this
one: what the file system delivers to plain large writes from these ranks.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("storage_baseline")

MIB = 1024**2
DEFAULT_BLOCK_BYTES = 16 * MIB


# ---- the rank program ----------------------------------------------------------

def make_block(size_bytes: int, block_bytes: int) -> bytes:
    """Return the random block every write repeats, made before any phase is timed."""
    return os.urandom(min(block_bytes, max(size_bytes, 1)))


def write_file(path: Path, size_bytes: int, block: bytes, fsync: bool) -> None:
    """Write ``size_bytes`` to ``path`` by repeating ``block``, fsync and close it."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        remaining = size_bytes
        while remaining > 0:
            view = memoryview(block)[: min(len(block), remaining)]
            while len(view):
                written = os.write(descriptor, view)
                view = view[written:]
                remaining -= written
        if fsync:
            os.fsync(descriptor)
    finally:
        os.close(descriptor)


def drop_page_cache(path: Path) -> bool:
    """Ask the kernel to drop the file's clean pages; False where that is not supported."""
    if not hasattr(os, "posix_fadvise"):
        return False
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
        return True
    except OSError as error:
        log.warning("could not drop the page cache of %s: %s", path, error)
        return False
    finally:
        os.close(descriptor)


def read_file(path: Path, block_bytes: int) -> int:
    """Read the whole file in blocks and return the bytes read."""
    total = 0
    buffer = bytearray(block_bytes)
    with open(path, "rb", buffering=0) as handle:
        while True:
            count = handle.readinto(buffer)
            if not count:
                return total
            total += count


def timed_phase(barrier, work) -> float:
    """Run ``work`` between two barriers and return the seconds from the first to the second.

    Every rank returns the same duration: the phase lasts until the slowest rank is done.
    """
    barrier()
    started = time.perf_counter()
    work()
    barrier()
    return time.perf_counter() - started


def run_rank(directory: Path, bytes_per_rank: int, block_bytes: int, repeats: int, fsync: bool) -> dict | None:
    """Run the write and read phases on this rank; rank 0 returns the measurements."""
    import torch.distributed as dist

    from train_checkpoint import rank_environment

    environment = rank_environment(os.environ)
    dist.init_process_group("gloo", rank=environment.rank, world_size=environment.world_size)
    path = directory / f"rank{environment.rank}.bin"
    writes_s, reads_s, dropped = [], [], True
    # Making 16 MiB of random bytes takes tens of ms, which the write phase must not include.
    block = make_block(bytes_per_rank, block_bytes)
    try:
        for _ in range(repeats):
            writes_s.append(timed_phase(dist.barrier, lambda: write_file(path, bytes_per_rank, block, fsync)))
            dropped = drop_page_cache(path) and dropped
            reads_s.append(timed_phase(dist.barrier, lambda: read_file(path, block_bytes)))
    finally:
        path.unlink(missing_ok=True)
        dist.barrier()
        dist.destroy_process_group()

    if environment.rank != 0:
        return None
    total_bytes = bytes_per_rank * environment.world_size
    return {
        "ranks": environment.world_size,
        "bytes_per_rank": bytes_per_rank,
        "block_bytes": block_bytes,
        "fsync": fsync,
        "repeats": repeats,
        "page_cache_dropped_before_read": dropped,
        "write_s": writes_s,
        "read_s": reads_s,
        "write_mib_per_s": total_bytes / MIB / statistics.median(writes_s),
        "read_mib_per_s": total_bytes / MIB / statistics.median(reads_s),
    }


# ---- the job ----------------------------------------------------------------------

def bytes_per_rank_from_manifests(manifests: list[dict]) -> int:
    """Return the largest checkpoint's size divided by its job's ranks.

    That is each rank's share of a checkpoint sharded evenly, as DCP shards it.

    Raises:
        ValueError: no manifest records a checkpoint.
    """
    sizes = [max(c["bytes"] for c in m["checkpoints"]) / m["world_size"] for m in manifests if m.get("checkpoints")]
    if not sizes:
        raise ValueError("no manifest records a checkpoint, so the baseline has no size to write; run a mode first")
    return int(max(sizes))


def read_manifest(path: Path) -> dict:
    """Read a training manifest, with an error that names the file and the fix when it is damaged.

    Raises:
        ValueError: the file is not a JSON object.
    """
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read the manifest {path} ({error}); delete it and rerun, "
                         "so that its training job runs again") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"the manifest {path} is not a JSON object; delete it and rerun, so that its training job runs again")
    return manifest


def run_job(settings: dict, manifests: list[dict], output: Path, repeats: int, block_bytes: int) -> dict:
    """Launch the baseline's ranks like a training job and write the result JSON."""
    import socket

    import run_training

    directory = Path(settings["checkpoint"]["dir"])
    directory.mkdir(parents=True, exist_ok=True)
    bytes_per_rank = bytes_per_rank_from_manifests(manifests)
    launch = settings["launch"]
    launcher = run_training.choose_launcher(launch["launcher"], os.environ)
    result_file = output.with_suffix(".rank0.json")
    result_file.unlink(missing_ok=True)
    arguments = ["--rank-program", "--directory", str(directory), "--bytes-per-rank", str(bytes_per_rank),
                 "--block-bytes", str(block_bytes), "--repeats", str(repeats), "--output", str(result_file)]
    if not settings["checkpoint"]["fsync"]:
        arguments.append("--no-fsync")
    command = run_training.build_launch_command(launcher, launch["nodes"], launch["ranks_per_node"], arguments,
                                                script=Path(__file__).resolve())
    environment = run_training.child_environment(
        os.environ, run_training.launch_variables(launcher, os.environ, output.parent), {})
    _, exit_code = run_training.run_launcher(command, environment)
    if exit_code != 0 or not result_file.is_file():
        raise RuntimeError(f"storage baseline job failed: {command[0]} exited with code {exit_code}; "
                           f"see the log above and check that {directory} is writable")

    result = json.loads(result_file.read_text())
    result_file.unlink()
    result.update({"directory": str(directory), "host": socket.gethostname(), "launcher": launcher,
                   "job_id": os.environ.get("SLURM_JOB_ID")})
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=1) + "\n")
    log.info("baseline with %d ranks x %.1f MiB: write %.0f MiB/s, read %.0f MiB/s", result["ranks"],
             bytes_per_rank / MIB, result["write_mib_per_s"], result["read_mib_per_s"])
    return result


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank-program", action="store_true", help="run as one rank (started by the launcher)")
    parser.add_argument("--settings", help="JSON settings of the job (as for run_training.py)")
    parser.add_argument("--manifest", type=Path, action="append", default=[], help="training manifests that size the baseline")
    parser.add_argument("--directory", type=Path, help="rank program: where the ranks write")
    parser.add_argument("--bytes-per-rank", type=int, help="rank program: bytes each rank writes")
    parser.add_argument("--block-bytes", type=int, default=DEFAULT_BLOCK_BYTES, help="bytes per write and read call")
    parser.add_argument("--repeats", type=int, default=3, help="write and read phases to run; the median counts")
    parser.add_argument("--no-fsync", action="store_true", help="rank program: do not fsync before close")
    parser.add_argument("--output", type=Path, required=True, help="result JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    if args.rank_program:
        result = run_rank(args.directory, args.bytes_per_rank, args.block_bytes, args.repeats, not args.no_fsync)
        if result is not None:
            args.output.write_text(json.dumps(result) + "\n")
        return 0

    settings: dict[str, Any] = json.loads(args.settings)
    try:
        manifests = [read_manifest(path) for path in args.manifest]
        run_job(settings, manifests, args.output, args.repeats, args.block_bytes)
    except (RuntimeError, ValueError) as error:
        log.error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
