"""The directories a job's dataset may come from, enforced on every file when the dataset is built.

The service checks data.root at submit, but a symlink inside it (`data/cats/x.png -> /etc/shadow`, or a class
folder linking to another owner's run) would lead the trainer anywhere. The worker names the allowed roots in
VITQ_DATA_ROOTS (os.pathsep-separated); the trainer then refuses a dataset with any link that resolves outside
them. Unset (the trainer run by hand), nothing is confined. Outside vit.data: the worker reads the variable's
name from here without importing torch.

Two ways to check, by what a dataset lists anyway: `check_confined` walks a whole tree (torchvision's datasets,
whose files torchvision lists itself); `check_link` checks one path the dataset's own listing met (image folders:
each entry is checked as it is listed, no second walk) or opens (shards: the index, each shard and member table
when it is first opened, so a million-image dataset starts without any listing).
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

    roots = check_root(root)
    if roots is None:
        return
    where = " or ".join(map(str, roots))
    pending, seen = [Path(os.path.realpath(root))], set()
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


def check_root(root: Path) -> list[Path] | None:
    """The allowed roots (None: not confined), after a DataError if `root` itself resolves outside them."""
    roots = allowed_roots()
    resolved = Path(os.path.realpath(root))
    if roots is not None and not _inside(resolved, roots):
        from vit.data.errors import DataError

        where = " or ".join(map(str, roots))
        raise DataError(f"data.root {root} resolves to {resolved}, outside the data directory {where}")
    return roots


def check_link(path: Path, roots: list[Path] | None) -> None:
    """DataError if `path` resolves outside `roots` (None: not confined), naming the path and the roots."""
    if roots is None:
        return
    target = Path(os.path.realpath(path))
    if not _inside(target, roots):
        from vit.data.errors import DataError

        where = " or ".join(map(str, roots))
        raise DataError(f"{path} links to {target}, outside the data directory {where}: refused")


def _inside(path: Path, roots: list[Path]) -> bool:
    return any(path.is_relative_to(root) for root in roots)


def _entries(directory: Path) -> list[os.DirEntry[str]]:
    from vit.data.errors import DataError

    try:
        with os.scandir(directory) as entries:
            return list(entries)
    except OSError as error:
        raise DataError(f"cannot list {directory}: {error}") from error
