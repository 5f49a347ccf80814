"""`make mutation`: mutmut over each core module, against that module's own tests only, then a table of killed /
survived mutants per module.

Each module runs in a scratch copy of this checkout (.mutation/<module>/, working tree as it is), so mutmut's
mutants/ folder never appears in the checkout others test from, and its config (which file to mutate, which
tests to run) can differ per module. Mutants listed in tests/MUTANTS.md are equivalent ones (no test can tell
them from the original); the "killed / non-equivalent" column leaves them out. A survivor missing from that
list, or a listed mutant that no longer survives, is named after the table; survivors' diffs are in
.mutation/<module>/survivors.diff. Each module's statuses are stored in .mutation/<module>/statuses.json:
`--table` prints every module's last run without running anything (after editing tests/MUTANTS.md, say)."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]
SCRATCH = CHECKOUT / ".mutation"
EQUIVALENTS = CHECKOUT / "tests" / "MUTANTS.md"
MUTMUT = Path(sys.executable).parent / "mutmut"

# mutmut's statuses: a mutant is caught when its tests fail, crash or hang.
CAUGHT = {"killed", "timeout", "segfault", "caught by type check"}


@dataclass(frozen=True)
class Target:
    source: str  # the file mutated
    tests: tuple[str, ...]  # the only tests run against its mutants
    # Tests left out of mutation runs, each with a faster one elsewhere in `tests` that holds the same promise.
    deselect: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return Path(self.source).stem

    @property
    def module(self) -> str:
        return self.source.removesuffix(".py").replace("/", ".")


TARGETS = (
    Target("vit/weights.py", ("tests/vit/test_weights.py", "tests/vit/test_weights_promises.py")),
    Target("vit/data/splits.py", ("tests/vit/test_data.py", "tests/vit/test_splits.py")),
    Target("vit/data/loader.py", ("tests/vit/test_data.py", "tests/vit/test_loader.py")),
    Target("vit/model.py", ("tests/vit/test_model.py", "tests/vit/test_model_promises.py")),
    Target("vit/checkpoint.py", ("tests/vit/test_checkpoint.py", "tests/vit/test_checkpoint_promises.py")),
    Target(
        "vit/rundir.py",
        (
            "tests/vit/test_rundir.py",
            "tests/vit/test_rundir_promises.py",
            "tests/vit/test_checkpoint_promises.py",
        ),
        # Its lock holder is a spawned interpreter importing torch: over 30 s on a busy machine, where it fails.
        # test_rundir_promises.py's lock test holds the lock from a plain Python process instead.
        deselect=(
            "tests/vit/test_rundir.py::test_the_trainer_lock_excludes_a_second_trainer_until_the_first_is_gone",
        ),
    ),
    Target(
        "api/core/spec_input.py",
        (
            "tests/api/server/test_submit.py",
            "tests/api/server/test_fuzz_input.py",
            "tests/api/core/test_spec_input.py",
        ),
    ),
    Target(
        "api/core/state_machine.py",
        ("tests/api/core/test_state_machine.py", "tests/api/core/test_state_machine_promises.py"),
    ),
    # Last: its two-process gloo tests spawn interpreters, a minute each on a busy machine.
    Target("vit/evaluate.py", ("tests/vit/test_evaluate.py", "tests/vit/test_evaluate_promises.py")),
)


@dataclass
class Outcome:
    target: Target
    statuses: dict[str, str]  # mutant name -> mutmut status
    equivalent: set[str]  # the module's mutants tests/MUTANTS.md lists
    date: str  # of the run
    tests: tuple[str, ...]  # the test files that run used

    @property
    def caught(self) -> int:
        return sum(status in CAUGHT for status in self.statuses.values())

    @property
    def survivors(self) -> set[str]:
        return {name for name, status in self.statuses.items() if status not in CAUGHT}

    def row(self) -> str:
        total = len(self.statuses)
        survived = len(self.survivors)
        counted = total - len(self.equivalent & self.survivors)
        return (
            f"| {self.target.source} ({', '.join(Path(t).name for t in self.tests)}) | {total} "
            f"| {self.caught} | {survived} | {_percent(self.caught, total)} | {_percent(self.caught, counted)} "
            f"| {self.date} |"
        )


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f} %" if whole else "-"


def listed_equivalents() -> set[str]:
    if not EQUIVALENTS.exists():
        return set()
    return set(re.findall(r"`([\w.]+__mutmut_\d+)`", EQUIVALENTS.read_text()))


def prepare(target: Target, workdir: Path) -> None:
    """A fresh copy of the checkout's files (tracked and untracked, not ignored), configured for this target."""
    shutil.rmtree(workdir, ignore_errors=True)
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=CHECKOUT,
        check=True,
        capture_output=True,
    ).stdout.decode()
    for relative in filter(None, listed.split("\0")):
        source = CHECKOUT / relative
        if source.is_file():  # a tracked file deleted in the working tree is left out
            (workdir / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, workdir / relative)
    write_config(target, workdir)


def write_config(target: Target, workdir: Path) -> None:
    """The checkout's pyproject.toml with a [tool.mutmut] section for this target."""
    ours = {
        "tests",
        "pyproject.toml",
        "mutants",
        "statuses.json",
        "survivors.diff",
    }  # copied or written apart
    top_level = sorted(p.name for p in workdir.iterdir() if p.name not in ours)
    config = {
        "source_paths": [target.source],
        # mutmut copies only the mutated file into mutants/: the rest of the checkout must come along
        "also_copy": top_level,
        "pytest_add_cli_args_test_selection": list(target.tests),
        "pytest_add_cli_args": [
            "-p",
            "no:cacheprovider",
            *(f"--deselect={test}" for test in target.deselect),
        ],
    }
    lines = ["", "[tool.mutmut]", *(f"{key} = {json.dumps(value)}" for key, value in config.items())]
    pyproject = (CHECKOUT / "pyproject.toml").read_text()
    (workdir / "pyproject.toml").write_text(pyproject + "\n".join(lines) + "\n")


def mutate(workdir: Path, jobs: int, log: Path, names: list[str] | None = None) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with log.open("w") as out:
        run = subprocess.run(
            [str(MUTMUT), "run", "--max-children", str(jobs), *(names or [])],
            cwd=workdir,
            env=env,
            stdout=out,
            stderr=out,
        )
    if run.returncode != 0:
        raise SystemExit(f"mutmut failed in {workdir} (exit {run.returncode}); see {log}")


def statuses(workdir: Path) -> dict[str, str]:
    listed = subprocess.run(
        [str(MUTMUT), "results", "--all", "true"], cwd=workdir, check=True, capture_output=True, text=True
    ).stdout
    return dict(re.findall(r"^\s+(\S+__mutmut_\d+): (.+)$", listed, flags=re.MULTILINE))


def write_survivor_diffs(workdir: Path, survivors: set[str]) -> None:
    diffs = [
        subprocess.run(
            [str(MUTMUT), "show", name], cwd=workdir, check=True, capture_output=True, text=True
        ).stdout
        for name in sorted(survivors)
    ]
    (workdir / "survivors.diff").write_text("\n".join(diffs))


def run_target(target: Target, jobs: int, *, survivors_only: bool = False) -> None:
    """Mutate one module and store its mutants' statuses (.mutation/<module>/statuses.json). survivors_only:
    test only the last run's survivors again, against the checkout's tests as they are now (the source must be
    unchanged; a mutant that tests killed stays killed when tests are only added)."""
    workdir = SCRATCH / target.name
    started = datetime.now(UTC)
    print(f"{target.source}: mutating against {' '.join(target.tests)} ...", flush=True)
    last: dict[str, str] = {}
    survivors: list[str] = []
    if survivors_only:
        last = json.loads((workdir / "statuses.json").read_text())["statuses"]
        if (CHECKOUT / target.source).read_bytes() != (workdir / target.source).read_bytes():
            raise SystemExit(f"{target.source} changed since its last run: run it in full")
        shutil.rmtree(workdir / "tests")
        shutil.copytree(CHECKOUT / "tests", workdir / "tests", ignore=shutil.ignore_patterns("__pycache__"))
        write_config(target, workdir)  # the target's test files may have grown
        survivors = sorted(name for name, status in last.items() if status not in CAUGHT)
        mutate(workdir, jobs, SCRATCH / f"{target.name}.log", survivors)
    else:
        prepare(target, workdir)
        mutate(workdir, jobs, SCRATCH / f"{target.name}.log")
    found = statuses(workdir)
    if survivors_only:  # mutmut forgets results when the test selection changes: keep the last run's kills
        found = {name: found[name] if name in survivors else status for name, status in last.items()}
    write_survivor_diffs(workdir, {name for name, status in found.items() if status not in CAUGHT})
    stored = {"date": f"{started:%Y-%m-%d}", "tests": list(target.tests), "statuses": found}
    (workdir / "statuses.json").write_text(json.dumps(stored, indent=1) + "\n")
    minutes = (datetime.now(UTC) - started).total_seconds() / 60
    print(f"  {len(found)} mutants, {dict(Counter(found.values()))}, {minutes:.1f} min", flush=True)


def stored_outcome(target: Target, equivalent: set[str]) -> Outcome | None:
    """The last run's result for `target` (with the tests that run used, which may be fewer than now)."""
    path = SCRATCH / target.name / "statuses.json"
    if not path.exists():
        return None
    stored = json.loads(path.read_text())
    mine = {name for name in equivalent if name.startswith(target.module + ".")}
    return Outcome(target, stored["statuses"], mine, stored["date"], tuple(stored["tests"]))


def print_table(outcomes: list[Outcome]) -> None:
    print("\n| module (tests) | mutants | killed | survived | killed / all | killed / non-equivalent | run |")
    print("|---|---|---|---|---|---|---|")
    for outcome in outcomes:
        print(outcome.row())
    for outcome in outcomes:
        unexplained = sorted(outcome.survivors - outcome.equivalent)
        stale = sorted(outcome.equivalent - outcome.survivors)
        if unexplained:
            print(
                f"\n{outcome.target.source}: survivors not listed in tests/MUTANTS.md "
                f"(diffs in .mutation/{outcome.target.name}/survivors.diff):"
            )
            print("\n".join(f"  {name}" for name in unexplained))
        if stale:
            print(f"\n{outcome.target.source}: listed in tests/MUTANTS.md but no longer surviving:")
            print("\n".join(f"  {name}" for name in stale))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "only", nargs="*", help="module names to run (default: all): " + ", ".join(t.name for t in TARGETS)
    )
    parser.add_argument("--jobs", type=int, default=2, help="mutants tested at once (default 2)")
    parser.add_argument(
        "--table", action="store_true", help="run nothing: the table of every module's last stored run"
    )
    parser.add_argument(
        "--survivors",
        action="store_true",
        help="test only the last run's survivors again (after adding tests)",
    )
    args = parser.parse_args()
    unknown = set(args.only) - {t.name for t in TARGETS}
    if unknown:
        parser.error(f"unknown modules: {', '.join(sorted(unknown))}")
    chosen = [t for t in TARGETS if not args.only or t.name in args.only]
    if not args.table:
        for target in chosen:
            run_target(target, args.jobs, survivors_only=args.survivors)
    equivalent = listed_equivalents()
    outcomes = [o for t in (TARGETS if args.table else chosen) if (o := stored_outcome(t, equivalent))]
    print_table(outcomes)


if __name__ == "__main__":
    main()
