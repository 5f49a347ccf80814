"""A worker's part in a multi-node job: join the gang, wait for it to fill, launch this node's torchrun.

Every node runs `torch.distributed.run` with the static rendezvous on the rank-0 member's advertised address and
the port it chose when it joined, and with its gang rank as `--node-rank`: node ranks follow the gang (rank 0's
node hosts global rank 0, which writes the run directory), and a node that never arrives fails the others'
rendezvous after `--rdzv-conf timeout`. The run directory must be one shared directory: rank 0 writes a token
file there before launching and every other node checks that it reads it, else fails the attempt with a clear
error instead of training into a directory nobody else sees.
"""

from __future__ import annotations

import fcntl
import logging
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from api.core import gangs, state_machine
from api.core.settings import Settings
from vit import rundir
from worker.placement import NodePlace

log = logging.getLogger(__name__)

WAIT_POLL_SECONDS = 0.5
SIOCGIFADDR = 0x8915  # Linux ioctl: an interface's IPv4 address
STORAGE_WAIT_SECONDS = 30.0  # how long a node waits for rank 0's token (a shared file system's cache lag)


@dataclass(frozen=True)
class GangPlace:
    """This node's place in a started gang."""

    membership: gangs.Membership
    gang: gangs.Gang

    @property
    def node_rank(self) -> int:
        return self.membership.node_rank

    @property
    def nodes(self) -> int:
        return len(self.gang.members)

    @property
    def job_id(self) -> int:
        return self.gang.claim.job_id

    @property
    def attempt(self) -> int:
        return self.gang.claim.attempt

    @property
    def rank_zero(self) -> str:
        first = self.gang.members[0]
        return f"{first.worker} at {first.address}"

    def trainer_command(
        self, spec_path: Path, run_dir: Path, procs_per_node: int, *, join_timeout_s: int
    ) -> list[str]:
        return trainer_command(
            spec_path,
            run_dir,
            procs_per_node,
            attempt=self.attempt,
            place=self,
            join_timeout_s=join_timeout_s,
        )

    def network_env(self) -> dict[str, str]:
        return network_env(self)

    def renew(self, *, session: Session, step: int) -> tuple[bool, bool]:
        return renew(session=session, place=self, step=step)

    def fail_attempt(self, *, session: Session, error: str) -> bool:
        return fail_attempt(session=session, place=self, error=error)


def free_port() -> int:
    """A port free on this machine now, for the rendezvous store rank 0's torchrun will listen on."""
    with socket.socket() as probe:
        probe.bind(("", 0))
        return int(probe.getsockname()[1])


def advertised_address(settings: Settings) -> str:
    return settings.advertise_address or socket.gethostname()


def form(
    *,
    sessions: Callable[[], Session],
    job_id: int,
    worker: str,
    settings: Settings,
    devices: list[int],
    wake_others: Callable[[int], None],
) -> GangPlace | None:
    """Join job `job_id`'s gang and wait (up to a lease) until it starts. None: not joined, or the gang did not
    fill in time (the place was given up)."""
    with sessions() as session:
        membership = gangs.join(
            session=session,
            job_id=job_id,
            worker=worker,
            address=advertised_address(settings),
            devices=devices,
            choose_port=free_port,
            stale_after_seconds=settings.lease_seconds,
        )
    if membership is None:
        return None
    log.info("job %s: joined its gang as node %s of %s", job_id, membership.node_rank, membership.nodes)
    if membership.node_rank == 0:
        wake_others(membership.nodes - 1)  # the other workers of the pool may all be asleep
    deadline = time.monotonic() + settings.lease_seconds
    while True:
        with sessions() as session:
            gang = gangs.started(session=session, membership=membership)
            if gang is not None:
                return GangPlace(membership, gang)
            if time.monotonic() >= deadline:
                if gangs.leave(session=session, membership=membership):
                    log.info("job %s: its gang did not fill within the lease; left it", job_id)
                    return None
                continue  # it started while we were leaving: run it
            if not gangs.forming(session=session, membership=membership):
                return None  # cancelled, or the gang ran without us
        time.sleep(WAIT_POLL_SECONDS)


def trainer_command(
    spec_path: Path,
    run_dir: Path,
    procs_per_node: int,
    *,
    attempt: int,
    place: GangPlace,
    join_timeout_s: int,
) -> list[str]:
    gang = place.gang
    return torchrun_command(
        spec_path,
        run_dir,
        procs_per_node,
        attempt=attempt,
        job_id=gang.claim.job_id,
        nodes=len(gang.members),
        node_rank=place.node_rank,
        endpoint=gang.rendezvous,
        local_address=gang.members[place.node_rank].address,
        join_timeout_s=join_timeout_s,
    )


def torchrun_command(
    spec_path: Path,
    run_dir: Path,
    procs_per_node: int,
    *,
    attempt: int,
    job_id: int,
    nodes: int,
    node_rank: int,
    endpoint: str,
    local_address: str,
    join_timeout_s: int,
) -> list[str]:
    """One node's torchrun of a multi-node job, whatever formed the nodes (a gang, a Slurm allocation)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        str(nodes),
        "--node-rank",
        str(node_rank),
        "--nproc-per-node",
        str(procs_per_node),
        # Static: the node rank is the gang's, so global rank 0 (the run directory's writer) is on node 0.
        "--rdzv-backend",
        "static",
        "--rdzv-endpoint",
        endpoint,
        "--rdzv-id",
        f"vitq-job-{job_id}-attempt-{attempt}",
        # This node's advertised address, not its host name (which other machines may not resolve), for the
        # process group's master address when it is rank 0.
        "--local-addr",
        local_address,
        "--rdzv-conf",
        f"timeout={join_timeout_s}",  # a node that never joins fails the attempt, it does not hang it
        "--max-restarts",
        "0",  # the service, not the elastic agent, restarts a job (from its checkpoint, on a fresh gang)
        "-m",
        "vit.train",
        str(spec_path.absolute()),
        "--out",
        str(run_dir.absolute()),
        "--attempt",
        str(attempt),
    ]


def network_env(place: GangPlace) -> dict[str, str]:
    return interface_env(place.gang.members[place.node_rank].address)


def interface_env(address: str) -> dict[str, str]:
    """Point gloo and NCCL at the interface holding this node's advertised address: by default they take the
    address the host name resolves to, often a loopback one (127.0.1.1) that other machines cannot reach."""
    interface = interface_of(address)
    return {} if interface is None else {"GLOO_SOCKET_IFNAME": interface, "NCCL_SOCKET_IFNAME": interface}


def interface_of(address: str) -> str | None:
    """The network interface with IPv4 `address` (a name is resolved first); None when none has it."""
    try:
        wanted = socket.gethostbyname(address)
    except OSError:
        return None
    for _, name in socket.if_nameindex():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                request = struct.pack("256s", name.encode()[:15])
                reply = fcntl.ioctl(probe.fileno(), SIOCGIFADDR, request)
            except OSError:  # no IPv4 address on this interface
                continue
        if socket.inet_ntoa(reply[20:24]) == wanted:
            return name
    return None


def token_path(run_dir: Path, attempt: int) -> Path:
    return run_dir / f"gang-{attempt}.token"


def token_text(place: NodePlace) -> str:
    return f"job {place.job_id} attempt {place.attempt} rank 0 {place.rank_zero}\n"


def write_storage_token(run_dir: Path, place: NodePlace) -> None:
    rundir.atomic_write_text(token_path(run_dir, place.attempt), token_text(place))


def check_shared_storage(run_dir: Path, place: NodePlace, wait_s: float = STORAGE_WAIT_SECONDS) -> str | None:
    """None when this node reads rank 0's token for this attempt; else the error that fails the attempt."""
    path = token_path(run_dir, place.attempt)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            if path.read_text() == token_text(place):
                return None
        except FileNotFoundError:
            pass
        if time.monotonic() >= deadline:
            return (
                f"storage at {run_dir} is not shared with the rank-0 node ({place.rank_zero}): "
                f"{path.name} did not appear within {wait_s:.0f} s. Multi-node jobs need "
                "VITQ_STORAGE on one shared volume (NFS) mounted at the same path on every node."
            )
        time.sleep(0.2)


def renew(*, session: Session, place: GangPlace, step: int) -> tuple[bool, bool]:
    """(still held, cancel requested) for this node: rank 0 renews the job and its own place, the others only
    their places (rank 0 alone sees a cancel and stops the gang's trainers through the run directory's lease)."""
    if place.node_rank == 0:
        held, cancel = state_machine.renew(session=session, claim=place.gang.claim, step=step)
        return held and gangs.renew(session=session, membership=place.membership), cancel
    return gangs.renew(session=session, membership=place.membership), False


def fail_attempt(*, session: Session, place: GangPlace, error: str) -> bool:
    """A non-zero node's trainer failed (or its storage is not shared): requeue the job (counting the attempt),
    which stops every other node at its next renewal."""
    return gangs.fail_attempt(session=session, membership=place.membership, error=error)
