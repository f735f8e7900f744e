"""Check the Slurm account that a profile gives, before the first job is submitted.

snakemake-executor-plugin-slurm passes the ``slurm_account`` resource to
``sbatch --account``. profiles/perlmutter/config.yaml ships a placeholder there.
Left in, it would fail only at the first submission, and the plugin's message
names the account but not the profile key to change.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Value of slurm_account in profiles/perlmutter/config.yaml until the user sets it.
ACCOUNT_PLACEHOLDER = "SET-ME-nersc-project"
ACCOUNT_KEY = "slurm_account"


class SlurmSettingsError(ValueError):
    """Raised for a Slurm resource that would make every submission fail."""


def raw_resource(resources: Any, name: str) -> Any:
    """Return the unevaluated value of one resource, or None when it is not set.

    ``resources`` is a Snakemake ``Resources`` object (from the command line or a
    profile), whose items keep the text as given in ``raw``, or a plain mapping.
    """
    if not resources:
        return None
    value = resources.get(name)
    return getattr(value, "raw", value)


def check_account(value: Any, where: str) -> None:
    """Reject a ``slurm_account`` that is empty or still the profile's placeholder.

    Raises:
        SlurmSettingsError: naming the key, the value found and how to set it.
    """
    if value is None:
        return
    text = str(value).strip().strip("'\"")
    if text and ACCOUNT_PLACEHOLDER.lower() not in text.lower():
        return
    raise SlurmSettingsError(
        f"{where}: {ACCOUNT_KEY} is {str(value)!r}, which is not a Slurm account. "
        f"Set {ACCOUNT_KEY} there to the account that the jobs are charged to "
        f"(on NERSC Perlmutter: your project, such as m1234, under default-resources in "
        f"profiles/perlmutter/config.yaml). `sacctmgr show assoc user=$USER format=account` "
        f"lists your accounts."
    )


def check_slurm_account(workflow: Any) -> None:
    """Check ``slurm_account`` in the default resources and in every rule's set-resources.

    Called while the Snakefile is parsed, so a placeholder account stops the run
    before the first sbatch, dry runs included.

    Raises:
        SlurmSettingsError: for the first empty or placeholder account found.
    """
    settings = workflow.resource_settings
    places: list[tuple[str, Any]] = [("default-resources", settings.default_resources)]
    overwrite: Mapping[str, Any] = settings.overwrite_resources or {}
    places += [(f"set-resources of rule {rule}", resources) for rule, resources in overwrite.items()]
    for where, resources in places:
        check_account(raw_resource(resources, ACCOUNT_KEY), where)

