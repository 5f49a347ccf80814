"""A node's part of a multi-node job (worker/gang.py): the storage check between nodes, and a torchrun whose
other node never arrives failing the attempt within the join timeout instead of hanging."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import yaml

from api.core.gangs import Gang, Member, Membership
from api.core.state_machine import Claim
from tests.e2e.stack import tiny_spec
from vit.config import JobSpec
from worker import gang
from worker.launch import trainer_env

SPEC = JobSpec.model_validate(tiny_spec(steps=5, resources={"nodes": 2})).resolved()


def place(rank: int, port: int = 29400, attempt: int = 3) -> gang.GangPlace:
    members = (Member(0, "host-a:11", "127.0.0.1", port), Member(1, "host-b:22", "127.0.0.1", None))
    claim = Claim(
        job_id=7, attempt=attempt, max_attempts=3, worker="host-a:11", spec=SPEC, parent_job_id=None
    )
    return gang.GangPlace(Membership(7, attempt, rank, 2, members[rank].worker), Gang(claim, members))


def test_a_node_reads_rank_zeros_token_only_on_shared_storage(tmp_path: Path) -> None:
    shared, elsewhere = tmp_path / "shared", tmp_path / "elsewhere"
    shared.mkdir()
    elsewhere.mkdir()
    gang.write_storage_token(shared, place(0))
    assert gang.check_shared_storage(shared, place(1), wait_s=0) is None
    error = gang.check_shared_storage(elsewhere, place(1), wait_s=0.3)
    assert error is not None
    assert error.startswith(
        f"storage at {elsewhere} is not shared with the rank-0 node (host-a:11 at 127.0.0.1)"
    )
    # A token left by an earlier attempt is not this attempt's.
    assert gang.check_shared_storage(shared, place(1, attempt=4), wait_s=0) is not None


def test_the_command_puts_each_node_at_its_gang_rank_on_rank_zeros_endpoint(tmp_path: Path) -> None:
    command = gang.trainer_command(
        tmp_path / "spec.json", tmp_path, 2, attempt=3, place=place(1, port=31000), join_timeout_s=9
    )
    joined = " ".join(command)
    assert "--nnodes 2 --node-rank 1 --nproc-per-node 2" in joined
    assert "--rdzv-backend static --rdzv-endpoint 127.0.0.1:31000" in joined
    assert "--rdzv-conf timeout=9" in joined and "--max-restarts 0" in joined
    assert "--local-addr 127.0.0.1" in joined  # node 1's advertised address, not its host name
    assert command[-2:] == ["--attempt", "3"]


def test_gloo_and_nccl_use_the_interface_of_the_advertised_address() -> None:
    assert gang.interface_of("127.0.0.1") == "lo"
    assert gang.interface_of("192.0.2.77") is None  # TEST-NET-1: on no interface here
    assert gang.network_env(place(1)) == {"GLOO_SOCKET_IFNAME": "lo", "NCCL_SOCKET_IFNAME": "lo"}


def test_a_node_whose_partner_never_joins_fails_within_the_join_timeout(tmp_path: Path) -> None:
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(SPEC.model_dump(mode="json")))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = gang.trainer_command(
        spec_path, tmp_path / "run", 1, attempt=1, place=place(0, port=port), join_timeout_s=5
    )
    started = time.monotonic()
    env = {**trainer_env(1), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, cwd=os.getcwd())
    took = time.monotonic() - started
    assert result.returncode != 0, result.stdout + result.stderr
    assert "1/2 clients joined" in result.stderr  # the rendezvous timed out, not some other failure
    assert took < 60, f"took {took:.0f} s for a 5 s join timeout"
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # nothing trained
