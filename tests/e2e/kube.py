"""Helpers for e2e tests: kubectl against the local cluster, polling with a deadline, network namespaces."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def cluster_env() -> dict[str, str]:
    exports = subprocess.run([str(REPO / "hack/cluster-env.sh")], check=True, capture_output=True, text=True).stdout
    env = dict(os.environ)
    for line in exports.splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        env[name] = value.replace("$PATH", env.get("PATH", ""))
    return env


ENV = cluster_env()


def kubectl_run(*args: str, stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """kubectl's whole outcome, for callers that inspect a refusal (exit code and stderr)."""
    return subprocess.run(["kubectl", *args], input=stdin, capture_output=True, text=True, env=ENV, timeout=timeout)


def helm(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """helm (the cluster's build, on the cluster env's PATH) against the local cluster."""
    result = subprocess.run(["helm", *args], capture_output=True, text=True, env=ENV, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed: {result.stderr.strip()}\n{result.stdout}")
    return result


def kubectl(*args: str, stdin: str | None = None, check: bool = True, timeout: float = 60) -> str:
    result = kubectl_run(*args, stdin=stdin, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def kubectl_json(*args: str) -> Any:
    return json.loads(kubectl(*args, "-o", "json"))


def wait_until(predicate: Callable[[], T | None], timeout: float, what: str, interval: float = 0.5) -> T:
    """Polls until predicate returns a truthy value; fails with `what` at the deadline."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as error:
            last_error = error
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_error})")


def pod_finished(namespace: str, name: str) -> dict[str, Any] | None:
    pod = kubectl_json("get", "pod", name, "-n", namespace)
    return pod if pod["status"].get("phase") in ("Succeeded", "Failed") else None


@dataclass(frozen=True)
class NetnsHost:
    """A network namespace on this machine with its own address, serving TCP on `port`."""

    name: str
    address: str
    port: int


def run_host(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


@dataclass(frozen=True)
class Netns:
    """A network namespace joined to this machine by a veth pair: `address` inside, and on this
    machine's end `host_if` with `gateway`, the namespace's default route."""

    name: str
    address: str
    gateway: str
    host_if: str


@contextlib.contextmanager
def netns(octet: int) -> Iterator[Netns]:
    """A fresh network namespace holding 10.250.<octet>.2 behind 10.250.<octet>.1; deleted afterwards,
    also when set up only in part."""
    suffix = uuid.uuid4().hex[:6]
    name, host_if, ns_if = f"ce-th-{suffix}", f"ceh{suffix}", f"cen{suffix}"
    gateway, address = f"10.250.{octet}.1", f"10.250.{octet}.2"
    try:
        run_host("ip", "netns", "add", name)
        run_host("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        run_host("ip", "link", "set", ns_if, "netns", name)
        run_host("ip", "addr", "add", f"{gateway}/30", "dev", host_if)
        run_host("ip", "link", "set", host_if, "up")
        run_host("ip", "-n", name, "addr", "add", f"{address}/30", "dev", ns_if)
        run_host("ip", "-n", name, "link", "set", ns_if, "up")
        run_host("ip", "-n", name, "link", "set", "lo", "up")
        run_host("ip", "-n", name, "route", "add", "default", "via", gateway)
        yield Netns(name, address, gateway, host_if)
    finally:
        subprocess.run(["ip", "link", "delete", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "delete", name], capture_output=True)
