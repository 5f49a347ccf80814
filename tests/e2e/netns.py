"""Two network namespaces for multi-node tests, so two workers reach each other and the database and broker
only over 10.x addresses, never loopback. Needs root and `ip` (iproute2).

    ns-0 ──veth── ns-1          the nodes' own link: 10.S.1.2 and 10.S.1.3 (what the workers advertise)
      │             │
    veth           veth         each namespace's link to the host, 10.S.1N.0/24; ns-1 routes to 10.S.10.1 ...
      └── host ─────┘           ... the host's end of ns-0's link: where PostgreSQL and Redis listen

No bridge and no forwarding: traffic between the namespaces never crosses the host's FORWARD chain (which Docker
sets to DROP), and traffic to the services is delivered locally on the host.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


def available() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None


def ip(*args: str, namespace: str | None = None) -> None:
    prefix = ["ip", "netns", "exec", namespace] if namespace else []
    subprocess.run([*prefix, "ip", *args], check=True, capture_output=True, timeout=30)


@dataclass(frozen=True)
class Network:
    host_address: str  # where the namespaces reach services on the host
    namespaces: dict[str, str]  # namespace name -> its address on the nodes' link

    def command(self, namespace: str, command: list[str]) -> list[str]:
        return ["ip", "netns", "exec", namespace, *command]


@contextmanager
def network() -> Iterator[Network]:
    """Two namespaces as drawn above, with a random 10.S; everything removed on exit."""
    tag = uuid.uuid4().hex[:6]
    subnet = f"10.{int(tag[:2], 16) % 200 + 20}"
    host = f"{subnet}.10.1"
    names = [f"vq-{tag}-0", f"vq-{tag}-1"]
    links: list[str] = []
    made: list[str] = []
    try:
        for name in names:
            subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=30)
            made.append(name)
            ip("link", "set", "lo", "up", namespace=name)
        between = (f"vqa{tag}", f"vqb{tag}")
        ip("link", "add", between[0], "type", "veth", "peer", "name", between[1])
        addresses = {}
        for index, (name, end) in enumerate(zip(names, between, strict=True)):
            addresses[name] = f"{subnet}.1.{index + 2}"
            ip("link", "set", end, "netns", name)
            ip("addr", "add", f"{addresses[name]}/24", "dev", end, namespace=name)
            ip("link", "set", end, "up", namespace=name)
            outside, inside = f"vqh{tag}{index}", f"vqn{tag}{index}"
            ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            links.append(outside)
            ip("link", "set", inside, "netns", name)
            ip("addr", "add", f"{subnet}.1{index}.1/24", "dev", outside)
            ip("link", "set", outside, "up")
            ip("addr", "add", f"{subnet}.1{index}.2/24", "dev", inside, namespace=name)
            ip("link", "set", inside, "up", namespace=name)
            if index:  # delivered locally on the host: no forwarding
                ip("route", "add", f"{host}/32", "via", f"{subnet}.1{index}.1", namespace=name)
        yield Network(host_address=host, namespaces=addresses)
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
        for link in links:
            subprocess.run(["ip", "link", "del", link], capture_output=True, timeout=30)
