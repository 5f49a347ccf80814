"""Does a search earn its keep? A TPE search with ASHA early stopping against the full grid, on the digits data,
through the real embedded service (`vitq serve`: SQLite, one worker, the real supervisor and pruner).

    nice -n 10 .venv/bin/python bench/search.py                 # the grid once, the search with seeds 0, 1, 2
    nice -n 10 .venv/bin/python bench/search.py --seeds 3 4 5 --max-jobs 20   # another budget, other seeds

The grid: 3 x 3 x 3 points over optim.lr, optim.weight_decay and optim.warmup_steps, every job to the end. The
search: examples/digits-lr-search.yaml (TPE over the same ranges, ASHA from step steps/3, reduction factor 3,
at most 16 jobs, one at a time). For each, it prints the best final val_top1 of any job that ran to the end and
the training steps spent (each job's last step, summed). The target (issue 22): the search's best within 0.5
points of the grid's, for at most half the grid's steps, for every seed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = str(ROOT)  # the service runs this checkout's code, whatever vitq is installed

from api.client import VitqClient  # noqa: E402
from tests.api.cli.service import running_service, wait_for  # noqa: E402

EXAMPLE = ROOT / "examples" / "digits-lr-search.yaml"
GRID = {
    "optim.lr": [3.0e-4, 1.0e-3, 3.0e-3],
    "optim.weight_decay": [0.0, 0.1, 0.3],
    "optim.warmup_steps": [0, 30, 90],
}
TARGET_POINTS, TARGET_SHARE = 0.5, 0.5


def run(client: VitqClient, body: dict[str, Any]) -> tuple[float, int, int, int, float]:
    """Submit, wait until every child ended; (best final val_top1, steps spent, jobs, pruned jobs, seconds)."""
    started = time.monotonic()
    sweep = client.sweep(body)
    searching = "method" in body

    def ended() -> bool:
        now = client.sweep_status(sweep["id"])
        if searching:
            return bool(now["ended"])
        return all(c["job"]["status"] in ("succeeded", "failed", "cancelled") for c in now["jobs"])

    wait_for(ended, timeout=6 * 3600, interval=2.0)
    done = client.sweep_status(sweep["id"])
    jobs = [c["job"] for c in done["jobs"]]
    finals = [j["latest_metrics"]["val_top1"] for j in jobs if j["status"] == "succeeded"]
    steps = sum(j["step"] for j in jobs)
    pruned = sum(j["status"] == "pruned" for j in jobs)
    return max(finals), steps, len(jobs), pruned, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=270, help="train.steps of every job (ASHA from steps/3)")
    parser.add_argument(
        "--max-jobs", type=int, default=None, help="the search's max_jobs (default: the example's)"
    )
    args = parser.parse_args()
    search = yaml.safe_load(EXAMPLE.read_text())
    search["base"]["train"].update(
        steps=args.steps, eval_every=args.steps // 9, log_every=args.steps // 9, checkpoint_every=args.steps
    )
    search["early_stop"]["min_steps"] = args.steps // 3
    if args.max_jobs is not None:
        search["max_jobs"] = args.max_jobs
    grid = {"name": "digits-lr-grid", "base": search["base"], "grid": GRID}

    with (
        tempfile.TemporaryDirectory() as home,
        running_service(Path(home)) as service,
        VitqClient(service.url) as client,
    ):
        grid_best, grid_steps, grid_jobs, _, grid_s = run(client, grid)
        print(
            f"grid   {grid_jobs} jobs  best val_top1 {grid_best:.4f}  steps {grid_steps}  {grid_s:.0f} s",
            flush=True,
        )
        rows = []
        for seed in args.seeds:
            best, steps, jobs, pruned, seconds = run(client, {**search, "seed": seed, "name": f"tpe-{seed}"})
            gap, share = (best - grid_best) * 100, steps / grid_steps
            met = gap >= -TARGET_POINTS and share <= TARGET_SHARE
            rows.append(met)
            print(
                f"tpe seed {seed}  {jobs} jobs ({pruned} pruned)  best val_top1 {best:.4f}  "
                f"({gap:+.2f} points against the grid's)  steps {steps} = {share:.2f} of the grid's  "
                f"{seconds:.0f} s  {'met' if met else 'MISSED'}",
                flush=True,
            )
        print(
            f"target (within {TARGET_POINTS} points, at most {TARGET_SHARE:.0%} of the steps): "
            f"{sum(rows)} of {len(rows)} seeds met"
        )


if __name__ == "__main__":
    main()
