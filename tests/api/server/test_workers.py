"""GET /workers, and jobs that no worker could ever fit: a 422 at submit naming the largest fit."""

from __future__ import annotations

from sqlalchemy import update

from api.core import workers
from api.core.models import Job, JobStatus
from tests.api.conftest import TINY_SPEC, Api, submit
from worker.usage import GpuReading, host_figures

GPU = {"name": "NVIDIA H100 80GB HBM3", "memory_mb": 81559}


def register(api: Api, name: str, *, devices: int, pool: str = "default") -> None:
    with api.session() as session:
        workers.announce(
            session=session,
            name=name,
            host=name.split(":")[0],
            pid=1,
            address=f"10.0.0.{len(name)}",
            pool=pool,
            cpus=32,
            devices=[{"index": i, **GPU} for i in range(devices)],
            concurrency=max(devices, 1),
        )


def test_workers_list_their_devices_and_the_job_on_each(api: Api) -> None:
    register(api, "gpu-a:1", devices=4)
    register(api, "cpu-b:2", devices=0, pool="cpu")
    job_id = submit(api)["id"]
    with api.session() as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(status=JobStatus.running, worker="gpu-a:1", devices="1,2")
        )
        session.commit()
    listed = {w["name"]: w for w in api.client.get("/workers").json()["items"]}
    assert sorted(listed) == ["cpu-b:2", "gpu-a:1"]
    gpu = listed["gpu-a:1"]
    assert (gpu["pool"], gpu["address"], gpu["cpus"], gpu["jobs"]) == ("default", "10.0.0.7", 32, [job_id])
    assert [(d["index"], d["busy"], d["job_id"]) for d in gpu["devices"]] == [
        (0, False, None),
        (1, True, job_id),
        (2, True, job_id),
        (3, False, None),
    ]
    assert listed["cpu-b:2"]["devices"] == []
    assert api.client.get(f"/jobs/{job_id}").json()["devices"] == [1, 2]


def test_a_heartbeat_carries_the_hosts_figures_and_a_bare_one_keeps_them(api: Api) -> None:
    register(api, "gpu-a:1", devices=2)
    assert api.client.get("/workers").json()["items"][0]["usage"] is None  # not measured yet
    gpus = [GpuReading(index=1, util_percent=93.0, mem_used_bytes=7 * 2**30, mem_total_bytes=80 * 2**30)]
    with api.session() as session:
        workers.beat(session=session, name="gpu-a:1", usage=host_figures(41.5, 3 * 2**30, 16 * 2**30, gpus))
        workers.beat(session=session, name="gpu-a:1")  # a heartbeat without figures keeps the last ones
    (shown,) = api.client.get("/workers").json()["items"]
    usage = shown["usage"]
    assert (usage["cpu_percent"], usage["mem_used_bytes"], usage["mem_total_bytes"]) == (
        41.5,
        3 * 2**30,
        16 * 2**30,
    )
    assert usage["gpus"] == [
        {"index": 1, "util_percent": 93.0, "mem_used_bytes": 7 * 2**30, "mem_total_bytes": 80 * 2**30}
    ]


def test_a_job_no_worker_could_fit_is_refused_with_the_largest_fit(api: Api) -> None:
    # No worker of the pool yet: accepted, and it says why it waits.
    waiting = submit(api, {**TINY_SPEC, "resources": {"procs_per_node": 16, "pool": "a100"}})
    assert (
        api.client.get(f"/jobs/{waiting['id']}")
        .json()["wait_reason"]
        .startswith("no worker of pool a100 is running")
    )
    register(api, "gpu-a:1", devices=4, pool="a100")
    register(api, "gpu-b:2", devices=8, pool="a100")
    stored = api.client.get("/jobs").json()["total"]
    refused = api.client.post(
        "/jobs", json={**TINY_SPEC, "resources": {"procs_per_node": 16, "pool": "a100"}}
    )
    assert refused.status_code == 422
    [error] = refused.json()["detail"]
    assert error["loc"] == ["body", "resources", "procs_per_node"]
    assert "largest worker of pool 'a100' has 8" in error["msg"]
    assert api.client.get("/jobs").json()["total"] == stored  # its INSERT, which read the fit, rolled back
    assert (
        submit(api, {**TINY_SPEC, "resources": {"procs_per_node": 8, "pool": "a100"}})["status"] == "queued"
    )
    # A CPU job needs no device; a CPU worker in a pool runs anything of it.
    assert submit(api, {**TINY_SPEC, "resources": {"procs_per_node": 16, "device": "cpu", "pool": "a100"}})
    register(api, "cpu-c:3", devices=0, pool="a100")
    assert submit(api, {**TINY_SPEC, "resources": {"procs_per_node": 16, "pool": "a100"}})


def test_a_multi_node_job_needs_as_many_workers_that_fit_a_node(api: Api) -> None:
    train = {**TINY_SPEC["train"], "batch_size": 48}  # divisible by every world size below
    three_nodes = {
        **TINY_SPEC,
        "train": train,
        "resources": {"nodes": 3, "procs_per_node": 4, "pool": "h100"},
    }
    assert submit(api, three_nodes)["status"] == "queued"  # no worker of the pool yet: it waits
    register(api, "gpu-a:1", devices=4, pool="h100")
    register(api, "gpu-b:2", devices=8, pool="h100")
    register(api, "gpu-c:3", devices=2, pool="h100")  # too small for a node of four GPUs
    refused = api.client.post("/jobs", json=three_nodes)
    assert refused.status_code == 422
    [error] = refused.json()["detail"]
    assert error["loc"] == ["body", "resources", "nodes"]
    assert "pool 'h100' has 2 live workers that fit a node of it: at most nodes 2" in error["msg"]
    with api.session() as session:
        assert session.query(Job).filter(Job.nodes == 3).count() == 1  # the refused one was not stored
    smaller = {**three_nodes, "resources": {"nodes": 3, "procs_per_node": 2, "pool": "h100"}}
    accepted = submit(api, smaller)
    assert accepted["status"] == "queued"


def test_a_worker_keeps_the_best_peak_its_host_has_shown_and_lists_it(api: Api) -> None:
    # Calibrations on one host under different loads: the registry keeps the best for the same device and
    # threads, so a worker restarted while the machine is busy does not hand its trainers a low peak.
    source = "measured fp32 matmul, CPU, 2 threads, fastest of 12"
    register(api, "cpu-a:1", devices=0)
    register(api, "cpu-a:2", devices=0)
    register(api, "cpu-b:3", devices=0)
    with api.session() as session:
        assert workers.record_peak(session=session, name="cpu-a:1", flops_per_s=9.6e10, source=source) == (
            9.6e10,
            source,
        )
        assert workers.record_peak(session=session, name="cpu-a:2", flops_per_s=4.0e10, source=source) == (
            9.6e10,
            source,
        )
        other_threads = "measured fp32 matmul, CPU, 1 thread, fastest of 12"
        assert (
            workers.record_peak(session=session, name="cpu-a:2", flops_per_s=5e10, source=other_threads)[0]
            == 5e10
        )
        assert (
            workers.record_peak(session=session, name="cpu-b:3", flops_per_s=3e10, source=source)[0] == 3e10
        )
    listed = {w["name"]: w for w in api.client.get("/workers").json()["items"]}
    assert (listed["cpu-a:1"]["peak_flops"], listed["cpu-a:1"]["peak_source"]) == (9.6e10, source)
    assert listed["cpu-b:3"]["peak_flops"] == 3e10


def test_a_slurm_pools_job_needs_a_node_with_its_cpus_and_memory(api: Api) -> None:
    # Two nodes of partition `cpu` as `vitq slurm --cpus-per-task 3 --mem-per-task 4G` publishes them.
    for name, cpus, memory in (("n1", 8, 32000), ("n2", 4, 64000)):
        with api.session() as session:
            workers.announce(
                session=session,
                name=f"slurm:hpc:{name}",
                host=name,
                pid=0,
                pool="hpc",
                cpus=cpus,
                partition="cpu",
                memory_mb=memory,
                cpus_per_task=3,
                memory_per_task_mb=4096,
            )

    def refused(resources: dict[str, object]) -> dict[str, object]:
        response = api.client.post("/jobs", json={**TINY_SPEC, "resources": {"pool": "hpc", **resources}})
        assert response.status_code == 422, response.text
        [error] = response.json()["detail"]
        return dict(error)

    # 4 processes x the pool's 3 CPUs: 12 CPUs, and n1 has 8.
    error = refused({"procs_per_node": 4, "device": "cpu"})
    assert error["loc"] == ["body", "resources", "procs_per_node"]
    assert error["msg"] == (
        "needs 12 CPUs on one node (4 processes x 3 CPUs); the largest node of partition 'cpu' (pool 'hpc') has 8"
    )
    error = refused({"procs_per_node": 2, "device": "cpu", "slurm": {"cpus_per_task": 6}})
    assert error["loc"] == ["body", "resources", "slurm", "cpus_per_task"]
    # The job's own memory per process wins over the pool's: 2 x 40G is more than n2's 64000 MB.
    error = refused({"procs_per_node": 2, "device": "cpu", "slurm": {"mem_per_task": "40G"}})
    assert error["loc"] == ["body", "resources", "slurm", "mem_per_task"]
    assert "needs 81920 MB of memory on one node" in str(error["msg"])
    # 2 x 3 CPUs fit n1 only: one node of it, not two.
    error = refused({"nodes": 2, "procs_per_node": 2, "device": "cpu"})
    assert error["loc"] == ["body", "resources", "nodes"]
    assert "has 1 with room for one node of it: at most nodes 1" in str(error["msg"])
    with api.session() as session:
        assert session.query(Job).filter(Job.pool == "hpc").count() == 0  # nothing refused was stored
    fits = {"nodes": 2, "procs_per_node": 1, "device": "cpu", "slurm": {"mem_per_task": "16G"}}
    assert submit(api, {**TINY_SPEC, "resources": {"pool": "hpc", **fits}})["status"] == "queued"
