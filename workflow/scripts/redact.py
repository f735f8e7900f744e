"""Write copies of the workflow's tables, reports and logs with user names and private paths replaced.

Course material built from a run should not show who ran it or where their
files live. This writes redacted copies into a separate directory and never
changes the originals:

- text files (CSV, Markdown, JSON): home and scratch paths become ``$HOME``,
  ``$SCRATCH`` and ``$PSCRATCH``, configured paths become ``<path>``, and user
  names become ``user``;
- Darshan logs: the copy gets a new file name, whose user part becomes ``user``.
  The log's contents are not rewritten, so the copy still contains the command line,
  the file names and the uid that Darshan recorded.

A user name with a letter in it is replaced wherever it is a word of its
own. A numeric user part (Darshan writes the uid when it finds no user name) is
replaced only at the start of a Darshan log name, because digits alone occur in
every table.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

log = logging.getLogger("redact")

# Environment variables that hold private paths, and the text that replaces each.
PATH_VARIABLES = ("HOME", "PSCRATCH", "SCRATCH")
USER_VARIABLES = ("USER", "LOGNAME")
PATH_PLACEHOLDER = "<path>"
USER_PLACEHOLDER = "user"
# Characters that continue a file or user name; a match must not have one on either side.
NAME_CHARACTERS = r"A-Za-z0-9._-"
# The part of a Darshan log name after the user part: _<exe>_id<jobid>-<pid>_
LOG_NAME_REST = r"_[^\s/]*?_id\d+-\d+_"


class RedactionError(ValueError):
    """Raised for a setting or an output directory that redaction cannot use."""


@dataclass
class Redactor:
    """The private strings of one run and what replaces each."""

    paths: dict[str, str] = field(default_factory=dict)
    users: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._pattern, self._replacements = self._compile()

    def _compile(self) -> tuple[re.Pattern | None, list[str]]:
        """Build one pattern of every private string, longest first, so a path wins over the user name inside it."""
        alternatives, replacements = [], []
        for path in sorted(self.paths, key=len, reverse=True):
            alternatives.append(rf"(?<![{NAME_CHARACTERS}]){re.escape(path)}(?![{NAME_CHARACTERS}])")
            replacements.append(self.paths[path])
        for user in sorted(self.users, key=len, reverse=True):
            # The user part of a Darshan log name: at the start of a word or a path component.
            alternatives.append(rf"(?<![^\s/,;:=\"'(\[]){re.escape(user)}(?={LOG_NAME_REST})")
            replacements.append(USER_PLACEHOLDER)
            if re.search(r"[A-Za-z]", user):
                alternatives.append(rf"(?<![A-Za-z0-9_]){re.escape(user)}(?![A-Za-z0-9])")
                replacements.append(USER_PLACEHOLDER)
        if not alternatives:
            return None, []
        pattern = re.compile("|".join(f"({alternative})" for alternative in alternatives))
        return pattern, replacements

    def text(self, text: str) -> str:
        """Return the text with every private path and user name replaced."""
        if self._pattern is None:
            return text
        return self._pattern.sub(lambda match: self._replacements[match.lastindex - 1], text)

    def leftovers(self, text: str) -> list[str]:
        """Return the private strings still in redacted text, inside longer names that were not replaced."""
        terms = list(self.paths) + [user for user in self.users if re.search(r"[A-Za-z]", user)]
        return [term for term in terms if term in text]


def environment_terms(environ: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """Return the private paths (with their placeholders) and user names found in the environment.

    A path is also taken in its resolved form, because a home directory is
    often a symbolic link into the file system that stores it. The root directory
    is never taken: it would redact every path.
    """
    paths: dict[str, str] = {}
    for variable in PATH_VARIABLES:
        value = environ.get(variable, "").rstrip("/")
        if not value.startswith("/"):
            continue
        for form in (value, os.path.realpath(value)):
            if len(form) > 1:
                paths.setdefault(form, f"${variable}")
    users = sorted({environ[variable] for variable in USER_VARIABLES if environ.get(variable)})
    return paths, users


def configured_paths(values: list[str], environ: Mapping[str, str]) -> dict[str, str]:
    """Expand ``~`` and ``$VARIABLES`` in the configured paths.

    Raises:
        RedactionError: a path is not absolute after expansion, or names a variable that is not set.
    """
    paths: dict[str, str] = {}
    for value in values:
        expanded = expand_variables(value, environ)
        if "$" in expanded:
            raise RedactionError(f"redact.paths: {value!r} names an environment variable that is not set. "
                                 "Set it, or write the path out")
        expanded = expanded.rstrip("/")
        if not expanded.startswith("/") or len(expanded) < 2:
            raise RedactionError(f"redact.paths: {value!r} is not an absolute path below /. "
                                 "Give the directory whose name must not be shared, such as /global/cfs/cdirs/m1234/alice")
        paths[expanded] = PATH_PLACEHOLDER
    return paths


def expand_variables(value: str, environ: Mapping[str, str]) -> str:
    """Expand a leading ``~`` and ``$VARIABLES`` from the given environment, leaving unset ones as they are."""
    if value.startswith("~") and environ.get("HOME"):
        value = environ["HOME"] + value[1:]
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?",
                  lambda match: environ.get(match.group(1), match.group(0)), value)


def build_redactor(users: list[str], paths: list[str], environ: Mapping[str, str]) -> Redactor:
    """Combine the configured users and paths with those of the environment.

    Raises:
        RedactionError: a configured path cannot be used.
    """
    environment_paths, environment_users = environment_terms(environ)
    all_paths = {**environment_paths, **configured_paths(paths, environ)}
    all_users = sorted({user.strip() for user in list(users) + environment_users if user.strip()})
    return Redactor(paths=all_paths, users=all_users)


def prepare_output(output_dir: Path) -> None:
    """Create the output directory; it must be new or empty, so no earlier file is overwritten or mixed in.

    Raises:
        RedactionError: the directory exists and is not empty.
    """
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise RedactionError(f"the output directory {output_dir} exists and is not empty. "
                             "Remove it or give a new directory")
    output_dir.mkdir(parents=True, exist_ok=True)


def redact_text_file(redactor: Redactor, source: Path, destination: Path) -> int:
    """Write a redacted copy of a text file; return how many private strings are left in it."""
    redacted = redactor.text(source.read_text(encoding="utf-8", errors="surrogateescape"))
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_text(redacted, encoding="utf-8", errors="surrogateescape")
    left = redactor.leftovers(redacted)
    for term in left:
        log.warning("%s still contains %r inside a longer name; check it before sharing", destination, term)
    return len(left)


def copy_logs_renamed(redactor: Redactor, source_dir: Path, destination_dir: Path) -> dict[str, str]:
    """Copy the Darshan logs of a directory under redacted file names; return the old and new names.

    Raises:
        RedactionError: two logs would get the same name.
    """
    destination_dir.mkdir(parents=True, exist_ok=True)
    renamed: dict[str, str] = {}
    for source in sorted(source_dir.glob("*.darshan")):
        name = redactor.text(source.name)
        if name in renamed.values():
            raise RedactionError(f"{source} and another log would both be named {name} after redaction. "
                                 "Leave the user name that makes them differ out of redact.users")
        shutil.copyfile(source, destination_dir / name)
        renamed[source.name] = name
    return renamed


def redact_results(redactor: Redactor, results_dir: Path, output_dir: Path,
                   text_files: list[Path], log_dirs: list[Path]) -> dict:
    """Write redacted copies of the text files and logs under ``output_dir``, mirroring ``results_dir``.

    Returns counts for the log: files written, logs renamed and private strings left.
    """
    prepare_output(output_dir)
    summary = {"text_files": 0, "logs": 0, "leftovers": 0}
    for source in text_files:
        destination = output_dir / relative_to_results(source, results_dir)
        summary["leftovers"] += redact_text_file(redactor, source, destination)
        summary["text_files"] += 1
    for source_dir in log_dirs:
        destination_dir = output_dir / relative_to_results(source_dir, results_dir)
        summary["logs"] += len(copy_logs_renamed(redactor, source_dir, destination_dir))
    return summary


def relative_to_results(path: Path, results_dir: Path) -> Path:
    """Return a path relative to the results directory.

    Raises:
        RedactionError: the path is not under it.
    """
    try:
        return path.resolve().relative_to(results_dir.resolve())
    except ValueError:
        raise RedactionError(f"{path} is not under the results directory {results_dir}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", type=Path, required=True, help="the workflow's results directory")
    parser.add_argument("--output-dir", type=Path, required=True, help="new or empty directory for the redacted copies")
    parser.add_argument("--text", type=Path, nargs="*", default=[], help="text files under --results-dir to copy redacted")
    parser.add_argument("--logs-dir", type=Path, action="append", default=[], help="directory of .darshan logs to copy under redacted names")
    parser.add_argument("--user", action="append", default=[], help="a user name to replace, besides $USER and $LOGNAME")
    parser.add_argument("--path", action="append", default=[], help="a path to replace, besides $HOME, $SCRATCH and $PSCRATCH")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    try:
        redactor = build_redactor(args.user, args.path, os.environ)
        summary = redact_results(redactor, args.results_dir, args.output_dir, args.text, args.logs_dir)
    except RedactionError as error:
        log.error("%s", error)
        return 1
    except OSError as error:
        log.error("cannot write the redacted copies (%s: %s). Free space or fix the permissions, then run again",
                  error.filename or args.output_dir, error.strerror or error)
        return 1
    log.info("wrote %d text files and %d logs to %s, replacing %d paths and %d user names",
             summary["text_files"], summary["logs"], args.output_dir, len(redactor.paths), len(redactor.users))
    if summary["leftovers"]:
        log.warning("%d private strings are left inside longer names; see the warnings above", summary["leftovers"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
