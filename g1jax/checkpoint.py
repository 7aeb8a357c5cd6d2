"""Training checkpoints through orbax: atomic, last-k kept, a corrupt latest falls back to the previous one.

A checkpoint is a set of named pytrees (params, optimizer state, reference policy, ...) plus a
JSON `meta` record (step, RNG seed, data cursor, config). orbax writes each step into a temporary
directory and renames it when complete, so a run killed mid-save leaves the previous checkpoint
intact; `restore_latest` also survives a latest step that is present but unreadable (a partial copy,
a truncated file): it warns, moves that step aside (to `<directory>-unreadable/`, so the run can write
the step again; nothing is deleted) and takes the one before. When steps exist but none can be
restored, that is a `CheckpointError`, never a silent fresh start.

Restoring takes abstract targets (`jax.ShapeDtypeStruct`s carrying the shardings the arrays should
land on), so a run can resume onto another mesh.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

META = "meta"


class CheckpointError(RuntimeError):
    """Checkpoints exist but none of them can be restored onto this run."""


def abstract_like(tree):
    """ShapeDtypeStructs (with shardings) of a pytree of arrays: the restore target for `tree`'s layout."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)


class Checkpointer:
    """`save(step, items, meta)` / `restore_latest(targets)` over a directory of step checkpoints."""

    def __init__(self, directory: str | os.PathLike, keep: int = 3):
        if keep < 1:
            raise ValueError(f"keep must be >= 1 checkpoint, got {keep}")
        self.directory = os.path.abspath(os.fspath(directory))
        os.makedirs(self.directory, exist_ok=True)
        self._manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        )

    def steps(self) -> list[int]:
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def save(self, step: int, items: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
        """Write one checkpoint and wait until it is committed (so a crash right after loses nothing)."""
        if META in items:
            raise ValueError(f"'{META}' is reserved for the JSON record")
        args = {name: ocp.args.StandardSave(tree) for name, tree in items.items()}
        args[META] = ocp.args.JsonSave(dict(meta))
        self._manager.save(int(step), args=ocp.args.Composite(**args), force=True)
        self._manager.wait_until_finished()

    def restore(self, step: int, targets: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        args = {name: ocp.args.StandardRestore(target) for name, target in targets.items()}
        args[META] = ocp.args.JsonRestore()
        restored = self._manager.restore(int(step), args=ocp.args.Composite(**args))
        items = {name: restored[name] for name in targets}
        return items, dict(restored[META])

    def restore_latest(self, targets: Mapping[str, Any]) -> tuple[int, dict[str, Any], dict[str, Any]] | None:
        """(step, items, meta) of the newest readable checkpoint, or None when the directory holds none.

        A newer step that cannot be read is skipped with a warning naming it and the error, and moved
        aside to `<directory>-unreadable/<step>`: left in place, it would make saving that step again
        fail. When no step can be restored, a `CheckpointError` lists why for each: the usual cause is a
        run whose settings no longer match what its checkpoints hold (a KL reference that was never
        saved, another model), and starting again from step 0 would silently drop the run's work."""
        steps = self.steps()
        _check_same_steps(self.directory, steps)
        failures = []
        for step in reversed(steps):
            try:
                items, meta = self.restore(step, targets)
            except Exception as error:  # orbax/tensorstore raise many types for damaged files
                failures.append((step, error))
                continue
            for bad, error in failures:
                moved = self._set_aside(bad)
                warnings.warn(
                    f"checkpoint step {bad} in {self.directory} could not be read ({_describe(error)}); "
                    f"moved it to {moved} and fell back to step {step}",
                    RuntimeWarning,
                    stacklevel=2,
                )
            return step, items, meta
        if failures:
            reasons = "; ".join(f"step {step}: {_describe(error)}" for step, error in failures)
            raise CheckpointError(
                f"none of the {len(steps)} checkpoint(s) in {self.directory} can be restored onto this run "
                f"({reasons}). "
                "If the run's settings changed since they were written (kl_coef, the model, freeze_vision), resume "
                "with the run's own config.json, or start a new run directory"
            )
        return None

    def _set_aside(self, step: int) -> str:
        """Move an unreadable step's folder out of the manager's directory; returns where it went."""
        _sync_processes(f"g1jax: setting checkpoint step {step} aside")  # every process sees the same folders
        aside = self.directory + "-unreadable"
        target = os.path.join(aside, str(step))
        copy = 1
        while os.path.exists(target):  # an earlier fallback set the same step aside
            target, copy = os.path.join(aside, f"{step}.{copy}"), copy + 1
        if jax.process_index() == 0:  # one host moves it; the others wait for the move
            os.makedirs(aside, exist_ok=True)
            os.replace(os.path.join(self.directory, str(step)), target)
        _sync_processes(f"g1jax: checkpoint step {step} set aside")
        self._manager.reload()
        return target

    def close(self) -> None:
        self._manager.close()


def _sync_processes(name: str) -> None:
    """Wait until every process reaches this point (nothing to wait for on one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _check_same_steps(directory: str, steps: list[int]) -> None:
    """Every process sees the same checkpoint steps (so all resume from the same one): a CheckpointError
    when they do not, as when the run directory is not on a file system shared by the hosts."""
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    mine = np.asarray([len(steps), max(steps, default=-1)], np.int64)
    seen = multihost_utils.process_allgather(mine)
    if not (seen == mine).all():
        listing = ", ".join(f"process {i}: {n} up to step {last}" for i, (n, last) in enumerate(seen.tolist()))
        raise CheckpointError(
            f"the processes see different checkpoints in {directory} ({listing}): the run directory must be on "
            "a file system every host sees"
        )


def _describe(error: Exception) -> str:
    return f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:200]}"
