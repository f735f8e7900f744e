"""Find the Darshan runtime library and build the environment that traces one job.

Darshan instruments a non-MPI program such as Python only when its shared library
is preloaded (``LD_PRELOAD``) and ``DARSHAN_ENABLE_NONMPI`` is set. Everything here
returns values for the training job's own environment; nothing changes ``os.environ``.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

LIBRARY_NAME = "libdarshan.so"

# Environment variables that site modules and package managers set to a Darshan
# installation prefix. The first one that contains lib/libdarshan.so wins.
PREFIX_VARIABLES = ("DARSHAN_BASE_DIR", "DARSHAN_ROOT", "DARSHAN_PREFIX", "DARSHAN_INSTALL_DIR")

# Python opens about 2,200 files per process while importing torch. Darshan's default
# of 1,024 records per module fills up before training starts, and then the checkpoint
# files get no record at all.
DEFAULT_MAX_RECORDS = 50000

HOW_TO_PROVIDE = (
    "On NERSC Perlmutter run `module load darshan` before Snakemake. Elsewhere install "
    "the Darshan runtime (for example `spack install darshan-runtime~mpi`, or a source "
    "build configured with --without-mpi) and set darshan.library in config/config.yaml "
    "to its lib/libdarshan.so or its installation prefix."
)


class DarshanNotFoundError(RuntimeError):
    """Raised when tracing is required and no Darshan runtime library was found."""


@dataclass
class DarshanRuntime:
    """A Darshan runtime installation and what its build settings tell about log names."""

    library: Path
    version: str | None = None
    log_path_by_env: list[str] = field(default_factory=list)
    default_log_path: str | None = None
    jobid_env: str | None = None

    def as_dict(self) -> dict:
        """Return the installation as plain JSON-serialisable values."""
        return {
            "library": str(self.library),
            "version": self.version,
            "log_path_by_env": list(self.log_path_by_env),
            "default_log_path": self.default_log_path,
            "jobid_env": self.jobid_env,
        }


def _library_in_prefix(prefix: Path) -> Path | None:
    for libdir in ("lib", "lib64"):
        candidate = prefix / libdir / LIBRARY_NAME
        if candidate.is_file():
            return candidate
    return None


def candidate_locations(configured: str | None, environ: dict[str, str]) -> list[tuple[str, Path]]:
    """List where to look for the library, in order, each with the reason it is looked at."""
    candidates: list[tuple[str, Path]] = []
    if configured:
        path = Path(os.path.expandvars(os.path.expanduser(configured)))
        candidates.append(("darshan.library", path))

    for variable in PREFIX_VARIABLES:
        if environ.get(variable):
            candidates.append((f"${variable}", Path(environ[variable])))

    config_tool = shutil.which("darshan-config", path=environ.get("PATH"))
    if config_tool:
        candidates.append(("darshan-config on PATH", Path(config_tool).resolve().parent.parent))

    for directory in environ.get("LD_LIBRARY_PATH", "").split(":"):
        if directory:
            candidates.append(("$LD_LIBRARY_PATH", Path(directory)))
    return candidates


def find_library(configured: str | None, environ: dict[str, str] | None = None) -> tuple[Path | None, list[str]]:
    """Find libdarshan.so.

    Args:
        configured: ``darshan.library`` from the config: the library file, its
            directory, or the installation prefix. Empty or None to search only.
        environ: the environment to search (default: this process's).

    Returns:
        The library path or None, and a line per place that was searched.
    """
    environ = dict(os.environ if environ is None else environ)
    searched: list[str] = []
    for reason, path in candidate_locations(configured, environ):
        searched.append(f"{path} ({reason})")
        if path.is_file():
            return path.resolve(), searched
        if path.is_dir():
            direct = path / LIBRARY_NAME
            if direct.is_file():
                return direct.resolve(), searched
            in_prefix = _library_in_prefix(path)
            if in_prefix:
                return in_prefix.resolve(), searched
    return None, searched


def _query_darshan_config(tool: Path, option: str) -> str | None:
    try:
        completed = subprocess.run([str(tool), option], capture_output=True, text=True, timeout=30, check=False)
    except OSError as error:
        log.warning("could not run %s %s: %s", tool, option, error)
        return None
    if completed.returncode != 0:
        return None
    return completed.stdout.strip()


def describe_runtime(library: Path) -> DarshanRuntime:
    """Read version and log-naming settings from the ``darshan-config`` beside the library.

    A library without its ``darshan-config`` (a copied .so) is still usable: the
    fields it would have filled stay empty and logs are looked for in both layouts.
    """
    runtime = DarshanRuntime(library=library)
    tool = library.parent.parent / "bin" / "darshan-config"
    if not tool.is_file():
        log.info("no darshan-config beside %s; Darshan version and log path settings unknown", library)
        return runtime

    version = _query_darshan_config(tool, "--version")
    if version:
        runtime.version = version.split()[-1]
    by_env = _query_darshan_config(tool, "--log-path-by-env")
    if by_env:
        runtime.log_path_by_env = [name for name in by_env.split(",") if name]
    default_path = _query_darshan_config(tool, "--log-path")
    runtime.default_log_path = default_path or None
    jobid_env = _query_darshan_config(tool, "--jobid-env")
    runtime.jobid_env = jobid_env or None
    return runtime


def resolve_runtime(enabled: str | bool, configured: str | None, environ: dict[str, str] | None = None) -> DarshanRuntime | None:
    """Apply ``darshan.enabled`` (true, false or "auto") to what is installed.

    Returns the runtime to trace with, or None to run untraced.

    Raises:
        DarshanNotFoundError: tracing is required (``true``) and no library was found.
    """
    if enabled is False or enabled == "false":
        return None

    library, searched = find_library(configured, environ)
    if library is None:
        where = "\n  ".join(searched) if searched else "(nowhere: darshan.library is empty and no Darshan variable is set)"
        if enabled is True or enabled == "true":
            raise DarshanNotFoundError(
                f"darshan.enabled is true but {LIBRARY_NAME} was not found. Searched:\n  {where}\n{HOW_TO_PROVIDE}"
            )
        log.warning(
            "Darshan runtime not found, so jobs run untraced and the Darshan columns read 'not traced'. "
            "Searched: %s. %s",
            "; ".join(searched) or "nothing (darshan.library is empty, no Darshan variable is set, "
            "no darshan-config on PATH, no LD_LIBRARY_PATH)",
            HOW_TO_PROVIDE,
        )
        return None
    return describe_runtime(library)


def render_config_file(max_records: int, modules: list[str], dxt: bool) -> str:
    """Return the text of a Darshan config file (``DARSHAN_CONFIG_PATH``)."""
    lines = [f"MAX_RECORDS {max_records} {','.join(modules)}"]
    if dxt:
        lines.append(f"MAX_RECORDS {max_records} DXT_POSIX")
    # Larger module and name buffers so that tens of thousands of records fit.
    lines.append("MODMEM 256")
    lines.append("NAMEMEM 64")
    return "\n".join(lines) + "\n"


def job_environment(runtime: DarshanRuntime, log_dir: Path, config_file: Path, dxt: bool,
                    extra_log_dir_variables: list[str] | None = None) -> dict[str, str]:
    """Return the variables that trace one job and put its logs into ``log_dir``.

    ``DARSHAN_LOGPATH`` makes a runtime built with a log path write into
    ``log_dir/<year>/<month>/<day>/``. A runtime built with ``--with-log-path-by-env``
    ignores it and writes into the directory named by the first of those variables
    that is set, so each of them is set to ``log_dir`` as well.
    """
    variables = {
        "LD_PRELOAD": str(runtime.library),
        "DARSHAN_ENABLE_NONMPI": "1",
        "DARSHAN_CONFIG_PATH": str(config_file),
        "DARSHAN_LOGPATH": str(log_dir),
    }
    for name in list(runtime.log_path_by_env) + list(extra_log_dir_variables or []):
        variables[name] = str(log_dir)
    if dxt:
        variables["DXT_ENABLE_IO_TRACE"] = "1"
    return variables
