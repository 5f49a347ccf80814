"""A node's place in a Slurm allocation: the allocation is the gang. Node ranks are Slurm's (SLURM_NODEID), the
rendezvous is on the first host's address at a port derived from the Slurm job id, and nothing is formed in the
database: rank 0 claims the job, the other nodes read its claim and hold the attempt while it runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from api.core import gangs, launches, state_machine
from api.core.state_machine import Claim
from worker import gang

PORT_BASE, PORT_SPAN = 20000, 20000  # the rendezvous port: PORT_BASE + Slurm job id mod PORT_SPAN


def rendezvous_port(slurm_job_id: str) -> int:
    return PORT_BASE + int(slurm_job_id) % PORT_SPAN


@dataclass(frozen=True)
class SlurmPlace:
    claim: Claim
    node_rank: int
    hosts: tuple[str, ...]  # the allocation's nodes, in Slurm's order (node rank order)
    addresses: tuple[str, ...]  # each node's NodeAddr
    slurm_job_id: str

    @property
    def nodes(self) -> int:
        return len(self.hosts)

    @property
    def job_id(self) -> int:
        return self.claim.job_id

    @property
    def attempt(self) -> int:
        return self.claim.attempt

    @property
    def rank_zero(self) -> str:
        return f"{self.hosts[0]} at {self.addresses[0]} in Slurm job {self.slurm_job_id}"

    def trainer_command(
        self, spec_path: Path, run_dir: Path, procs_per_node: int, *, join_timeout_s: int
    ) -> list[str]:
        return gang.torchrun_command(
            spec_path,
            run_dir,
            procs_per_node,
            attempt=self.attempt,
            job_id=self.job_id,
            nodes=self.nodes,
            node_rank=self.node_rank,
            endpoint=f"{self.addresses[0]}:{rendezvous_port(self.slurm_job_id)}",
            local_address=self.addresses[self.node_rank],
            join_timeout_s=join_timeout_s,
        )

    def network_env(self) -> dict[str, str]:
        return gang.interface_env(self.addresses[self.node_rank])

    def renew(self, *, session: Session, step: int) -> tuple[bool, bool]:
        if self.node_rank == 0:
            return state_machine.renew(session=session, claim=self.claim, step=step)
        return launches.attempt_runs(session=session, job_id=self.job_id, attempt=self.attempt), False

    def fail_attempt(self, *, session: Session, error: str) -> bool:
        place = gangs.Membership(
            self.job_id, self.attempt, self.node_rank, self.nodes, self.hosts[self.node_rank]
        )
        return gangs.fail_attempt(session=session, membership=place, error=error)
