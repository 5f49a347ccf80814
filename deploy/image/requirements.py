"""Write the image's requirement files from pyproject.toml: api.txt (everything the API, the CLI and migrations
import: no torch) and worker.txt (api.txt plus the trainer's packages). Run at build time, so the dependency
layers depend on the dependency list alone, not on pyproject.toml's other tables or on the source.

usage: python requirements.py PYPROJECT OUT_DIR
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

# Imported only by the trainer processes (vit.train and below), never by api/ or the worker's main process.
# (numpy and scikit-learn are the API's too: Optuna's samplers and its fANOVA importance, api/core/search.py.)
TRAINER_ONLY = {"torch", "torchvision", "safetensors"}


def project_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return match.group(0).lower().replace("_", "-")


def split(pyproject: Path) -> tuple[list[str], list[str]]:
    data = tomllib.loads(pyproject.read_text())
    requirements = [line.split("#")[0].strip() for line in data["project"]["dependencies"]]
    build = list(data["build-system"]["requires"])  # the source is installed without build isolation
    api = [r for r in requirements if project_name(r) not in TRAINER_ONLY]
    return build + api, build + requirements


def main(argv: list[str]) -> None:
    pyproject, out = Path(argv[1]), Path(argv[2])
    api, worker = split(pyproject)
    out.mkdir(parents=True, exist_ok=True)
    (out / "api.txt").write_text("\n".join(api) + "\n")
    (out / "worker.txt").write_text("\n".join(worker) + "\n")


if __name__ == "__main__":
    main(sys.argv)
