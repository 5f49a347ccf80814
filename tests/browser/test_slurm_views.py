"""The dashboard's Slurm views in real Chromium, with a private Slurm cluster and a `vitq slurm` dispatcher
(tests/worker/slurm/fixtures.py): the Workers page lists the pool's partition and nodes, a running two-node job's
page its Slurm nodes and Slurm job id, and a job pending in Slurm Slurm's own reason."""

# ruff: noqa: F811 (the fixtures imported below are the test function's arguments)
from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.stack import Stack
from tests.worker.slurm.cluster import CPUS_PER_NODE, Cluster
from tests.worker.slurm.fixtures import (  # noqa: F401 (fixtures, module-scoped: one cluster per module)
    POOL,
    SKIPS,
    cluster,
    dispatcher,
    slurm_id,
    spec,
    stack,
)

pytestmark = [pytest.mark.browser, *SKIPS]


def test_the_workers_page_and_job_pages_show_slurms_partition_nodes_job_ids_and_reasons(
    page: Page, stack: Stack, cluster: Cluster, dispatcher: Path
) -> None:
    url = str(stack.client.base_url).rstrip("/")
    page.goto(f"{url}/#/workers")
    for node in ("n1", "n2"):
        row = page.locator(f'tr[data-worker="slurm:{POOL}:{node}"]')
        expect(row).to_contain_text(f"{POOL} (Slurm partition batch)", timeout=30_000)
        expect(row.locator('td[data-label="CPUs"]')).to_have_text(str(CPUS_PER_NODE))

    # A two-node job runs on one CPU of each node; another user's job takes the rest of both nodes, so a third
    # job waits in Slurm for Resources.
    two_nodes = stack.post(spec(steps=100_000, checkpoint_every=100_000, nodes=2))
    running = stack.wait_for(two_nodes["id"], lambda j: j["step"] > 0, timeout=90, what="training")
    rest = CPUS_PER_NODE - 1
    blocker = cluster.run(
        "sbatch", "--parsable", "-p", "batch", "-N2", f"-c{rest}", "--mem=100M", "-o", "/dev/null",
        "--wrap", "sleep 300",
    ).strip()  # fmt: skip
    waiting = stack.post(spec(steps=10))
    try:
        pending = stack.wait_for(
            waiting["id"],
            lambda j: (j["wait_reason"] or "").endswith("Resources"),
            timeout=60,
            what="pending",
        )
        page.goto(f"{url}/#/jobs/{two_nodes['id']}")
        expect(page.locator("div", has=page.locator("dt", has_text="Nodes"))).to_contain_text(
            ", ".join(running["nodes"])
        )
        assert sorted(running["nodes"]) == ["n1", "n2"]
        expect(page.locator("div", has=page.locator("dt", has_text="Slurm job"))).to_contain_text(
            slurm_id(running)
        )
        page.goto(f"{url}/#/workers")
        for node in ("n1", "n2"):  # each node lists the job it runs
            jobs = page.locator(f'tr[data-worker="slurm:{POOL}:{node}"] td[data-label="Jobs"]')
            expect(jobs).to_contain_text(f"#{two_nodes['id']}", timeout=10_000)
        page.goto(f"{url}/#/jobs/{waiting['id']}")
        expect(page.locator("div", has=page.locator("dt", has_text="Waiting"))).to_contain_text(
            f"Slurm job {slurm_id(pending)} pending: Resources"
        )
    finally:
        cluster.run("scancel", blocker)
        for job in (two_nodes, waiting):
            stack.client.post(f"/jobs/{job['id']}/cancel")
    stack.wait_status(two_nodes["id"], "cancelled", timeout=60)
