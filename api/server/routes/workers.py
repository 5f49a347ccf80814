"""Workers: who is alive, their pool and devices, and which job holds each device."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select

from api.core import workers
from api.core.models import Job, JobStatus
from api.core.schemas import DeviceOut, HostUsageOut, WorkerList, WorkerOut
from api.core.state_machine import visible_to
from api.server.auth import PrincipalDep
from api.server.deps import SessionDep, SettingsDep

router = APIRouter(tags=["workers"])


@router.get("/workers")
def list_workers(session: SessionDep, settings: SettingsDep, principal: PrincipalDep) -> WorkerList:
    """Live workers (heartbeat within the lease), each device with the running job that holds it (jobs of other
    owners show as busy devices without an id: their existence does not leak)."""
    alive = workers.live(session=session, lease_seconds=settings.lease_seconds)
    visible = set(
        session.scalars(select(Job.id).where(Job.status == JobStatus.running, *visible_to(principal)))
    )
    running = [
        (job_id if job_id in visible else None, worker, devices, pool, placement, ref)
        for job_id, worker, devices, pool, placement, ref in session.execute(
            select(Job.id, Job.worker, Job.devices, Job.pool, Job.placement, Job.executor_ref).where(
                Job.status == JobStatus.running
            )
        )
    ]
    holder: dict[tuple[str, int], int | None] = {}
    jobs_of: dict[str, list[int]] = {}
    for job_id, worker, devices, pool, placement, ref in running:
        if job_id is not None and ref and ref.startswith("slurm:"):  # on the Slurm nodes of its placement
            for node in (placement or "").split(","):
                jobs_of.setdefault(f"slurm:{pool}:{node}", []).append(job_id)
        elif job_id is not None:
            jobs_of.setdefault(worker or "", []).append(job_id)
        for device in (devices or "").split(","):
            if device:
                holder[(worker or "", int(device))] = job_id
    return WorkerList(
        items=[
            WorkerOut(
                name=w.name,
                host=w.host,
                address=w.address,
                pool=w.pool,
                cpus=w.cpus,
                concurrency=w.concurrency,
                started_at=w.started_at,
                heartbeat_at=w.heartbeat_at,
                jobs=sorted(jobs_of.get(w.name, [])),
                partition=w.partition,
                devices=[
                    DeviceOut(
                        **d,
                        busy=(w.name, int(d["index"])) in holder,
                        job_id=holder.get((w.name, int(d["index"]))),
                    )
                    for d in w.devices
                ],
                peak_flops=w.peak_flops,
                peak_source=w.peak_source,
                usage=HostUsageOut.model_validate(w.usage) if w.usage else None,
            )
            for w in alive
        ]
    )
