"""Training checkpoints through orbax: atomic, last-k kept, a corrupt latest falls back to the previous one.

A checkpoint is a set of named pytrees (params, optimizer state, reference policy, ...) plus a
JSON `meta` record (step, RNG seed, data cursor, config). orbax writes each step into a temporary
directory and renames it when complete, so a run killed mid-save leaves the previous checkpoint
intact; `restore_latest` also survives a latest step that is present but unreadable (a partial copy,
a truncated file) by warning and trying the one before.

Restoring takes abstract targets (`jax.ShapeDtypeStruct`s carrying the shardings the arrays should
land on), so a run can resume onto another mesh.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp

META = "meta"


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
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

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
        """(step, items, meta) of the newest readable checkpoint, or None when there is none.

        An unreadable newer step is skipped with a warning naming it and the error."""
        for step in reversed(self.steps()):
            try:
                items, meta = self.restore(step, targets)
            except Exception as error:  # orbax/tensorstore raise many types for damaged files
                warnings.warn(f"checkpoint step {step} in {self.directory} could not be read "
                              f"({type(error).__name__}: {str(error).splitlines()[0][:200]}); "
                              f"falling back to the previous one", RuntimeWarning, stacklevel=2)
                continue
            return step, items, meta
        return None

    def close(self) -> None:
        self._manager.close()
