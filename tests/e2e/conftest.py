"""Fixtures for e2e tests: the local cluster from `make cluster`, namespaces and netns test hosts."""

from __future__ import annotations

import socket
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from tests.e2e.kube import REPO, NetnsHost, kubectl, run_host, wait_until


@pytest.fixture(scope="session")
def cluster() -> None:
    status = subprocess.run([str(REPO / "hack/cluster.sh"), "status"], capture_output=True, text=True)
    if status.returncode != 0:
        pytest.fail(f"the local cluster is not healthy; run `make cluster` first:\n{status.stdout}")


@pytest.fixture
def namespace(cluster: None) -> Iterator[str]:
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


def _accepts(address: str, port: int) -> bool:
    try:
        socket.create_connection((address, port), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.fixture
def test_host(cluster: None) -> Iterator[NetnsHost]:
    suffix = uuid.uuid4().hex[:6]
    netns, host_if, ns_if = f"ce-th-{suffix}", f"ceh{suffix}", f"cen{suffix}"
    octet = 1 + int(suffix, 16) % 250
    host_ip, ns_ip = f"10.250.{octet}.1", f"10.250.{octet}.2"
    run_host("ip", "netns", "add", netns)
    run_host("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
    run_host("ip", "link", "set", ns_if, "netns", netns)
    run_host("ip", "addr", "add", f"{host_ip}/30", "dev", host_if)
    run_host("ip", "link", "set", host_if, "up")
    run_host("ip", "-n", netns, "addr", "add", f"{ns_ip}/30", "dev", ns_if)
    run_host("ip", "-n", netns, "link", "set", ns_if, "up")
    run_host("ip", "-n", netns, "link", "set", "lo", "up")
    run_host("ip", "-n", netns, "route", "add", "default", "via", host_ip)
    server = subprocess.Popen(
        ["ip", "netns", "exec", netns, "python3", "-m", "http.server", "8080", "--bind", ns_ip],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: _accepts(ns_ip, 8080), 20, f"the test server on {ns_ip}:8080")
        yield NetnsHost(netns, ns_ip, 8080)
    finally:
        server.kill()
        server.wait()
        subprocess.run(["ip", "link", "delete", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "delete", netns], capture_output=True)
