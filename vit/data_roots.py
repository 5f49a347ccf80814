"""The directories a job's dataset may come from, enforced on every file when the dataset is built.

The service checks data.root at submit, but a symlink inside it (`data/cats/x.png -> /etc/shadow`, or a class
folder linking to another owner's run) would lead the trainer anywhere. The worker names the allowed roots in
VITQ_DATA_ROOTS (os.pathsep-separated); the trainer then refuses a dataset with any link that resolves outside
them. Unset (the trainer run by hand), nothing is confined. Outside vit.data: the worker reads the variable's
name from here without importing torch.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ROOTS_ENV = "VITQ_DATA_ROOTS"


def allowed_roots() -> list[Path] | None:
    value = os.environ.get(DATA_ROOTS_ENV, "")
    roots = [Path(os.path.realpath(part)) for part in value.split(os.pathsep) if part]
    return roots or None


def check_confined(root: Path) -> None:
    """DataError if `root`, or anything a link under it leads to, resolves outside the allowed roots. Links to
    directories inside them are followed and checked in turn (each directory once: a link loop ends)."""
    from vit.data.errors import DataError  # here: importing vit.data imports torch

    roots = allowed_roots()
    if roots is None:
        return
    where = " or ".join(map(str, roots))
    pending, seen = [Path(os.path.realpath(root))], set()
    if not _inside(pending[0], roots):
        raise DataError(f"data.root {root} resolves to {pending[0]}, outside the data directory {where}")
    while pending:
        directory = pending.pop()
        if directory in seen:
            continue
        seen.add(directory)
        for entry in _entries(directory):
            if entry.is_symlink():
                target = Path(os.path.realpath(entry))
                if not _inside(target, roots):
                    raise DataError(
                        f"{entry.path} links to {target}, outside the data directory {where}: refused"
                    )
                if target.is_dir():
                    pending.append(target)
            elif entry.is_dir():
                pending.append(Path(entry.path))


def _inside(path: Path, roots: list[Path]) -> bool:
    return any(path.is_relative_to(root) for root in roots)


def _entries(directory: Path) -> list[os.DirEntry[str]]:
    from vit.data.errors import DataError

    try:
        with os.scandir(directory) as entries:
            return list(entries)
    except OSError as error:
        raise DataError(f"cannot list {directory}: {error}") from error
