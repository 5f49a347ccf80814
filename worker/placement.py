"""The seam between the supervisor and an executor for jobs that run on several nodes: a node's place.

The supervisor (worker/supervisor.py) runs one node of a job the same way under every executor: it launches
this node's torchrun, renews (rank 0: the job's lease; other nodes: their own hold on the attempt), and ends a
failed attempt. What differs is how the nodes found each other: a Celery gang formed in the database
(worker/gang.py), or a Slurm allocation (worker/slurm/place.py). A Kubernetes JobSet would be one more.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from sqlalchemy.orm import Session


class NodePlace(Protocol):
    @property
    def node_rank(self) -> int: ...

    @property
    def nodes(self) -> int: ...

    @property
    def job_id(self) -> int: ...

    @property
    def attempt(self) -> int: ...

    @property
    def rank_zero(self) -> str:
        """Who rank 0 is and where (for a token other nodes check, and for error messages)."""
        ...

    def trainer_command(
        self, spec_path: Path, run_dir: Path, procs_per_node: int, *, join_timeout_s: int
    ) -> list[str]: ...

    def network_env(self) -> dict[str, str]:
        """Variables that point gloo and NCCL at the interface other nodes reach this one on."""
        ...

    def renew(self, *, session: Session, step: int) -> tuple[bool, bool]:
        """(still held, cancel requested) for this node; rank 0 alone renews the job and sees a cancel."""
        ...

    def fail_attempt(self, *, session: Session, error: str) -> bool:
        """This node's trainer failed: end the attempt for every node (requeued, or failed when out of
        attempts). True when it was queued again."""
        ...
