"""Benchmark: round trip of a trivial `db` query from code, SQLite and PostgreSQL, p50/p95 over --calls calls in
one Python Execution, against the same query over a direct connection from the same node, measured in the same run.

The binding path: the program's `bindings[name].execute(...)` → HTTP to the broker (its Service's ClusterIP) → the
access check (token, Execution Running, binding named and present) → the engine → the JSON result back. The program
times each call with time.perf_counter and returns the list. The baselines: the same query with Python's sqlite3
on a file on this host, and with asyncpg from this host to the PostgreSQL pod's IP, one connection each; the
program and the baselines first make --warmup calls that are not counted (connections opened, caches filled).

It uses the demo release (`make demo`: its operator watches code-exec-demo and has the broker): in that namespace
it creates two SandboxBindings (a SQLite database, and a PostgreSQL one whose DSN is in a Secret) and the
Execution; the PostgreSQL server (localhost/codeexec/e2e-postgres, built by hack/build-images.sh) runs as a pod
and Service in a namespace of its own. The DSN names the Service's ClusterIP (pods here have no cluster DNS).
Everything it made is deleted afterwards, the SQLite database file in the broker's volume excepted.
The Execution runs cold (bindings never take a pool pod), so the node needs room for one default sandbox (500m CPU):
beside the demo's full pools the 2-core dev node has none, so run `DEMO_POOL_REPLICAS=0 make demo` first.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import secrets
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg
from kubernetes import client, config
from kubernetes.stream import stream

GROUP, VERSION = "codeexec.io", "v1alpha1"
NAMESPACE = "code-exec-demo"
BROKER = "code-exec-broker"  # the demo release's broker Deployment
BROKER_SELECTOR = "app.kubernetes.io/instance=code-exec,app.kubernetes.io/component=broker"
POSTGRES_IMAGE = "localhost/codeexec/e2e-postgres:0.1.0"
POSTGRES_PORT = 5432
READY_SECONDS = 120
TERMINAL = ("Succeeded", "Failed", "TimedOut", "Rejected")
# The trivial query, with one bound parameter, in each engine's placeholders.
QUERY = {"sqlite": "SELECT ? + 1 AS n", "postgres": "SELECT $1::int + 1 AS n"}
# The program: warm-up calls, then each timed call; returns {binding: [ms, ...]}.
PROGRAM = """
import time

timings = {}
for name, sql in input["queries"].items():
    client = bindings[name]
    for i in range(input["warmup"]):
        client.execute(sql, [i])
    timings[name] = []
    for i in range(input["calls"]):
        start = time.perf_counter()
        rows = client.execute(sql, [i])
        timings[name].append((time.perf_counter() - start) * 1000)
        assert rows == [{"n": i + 1}], rows
return timings
"""


def wait_for(what: str, ready: Callable[[], Any]) -> Any:
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        if value := ready():
            return value
        time.sleep(0.5)
    raise RuntimeError(f"{what} not ready in {READY_SECONDS} s")


@contextmanager
def postgres_server(core: client.CoreV1Api, namespace: str, password: str) -> Iterator[tuple[str, str]]:
    """A PostgreSQL pod and Service in `namespace` (created here, deleted afterwards); yields (pod IP, ClusterIP)."""
    labels = {"app": "bench-postgres"}
    core.create_namespace({"metadata": {"name": namespace}})
    try:
        core.create_namespaced_pod(
            namespace,
            {
                "metadata": {"name": "postgres", "labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": "postgres",
                            "image": POSTGRES_IMAGE,
                            "imagePullPolicy": "Never",
                            "env": [{"name": "POSTGRES_PASSWORD", "value": password}],
                            "ports": [{"containerPort": POSTGRES_PORT}],
                            "readinessProbe": {
                                "exec": {"command": ["pg_isready", "-h", "127.0.0.1"]},
                                "periodSeconds": 1,
                            },
                            "volumeMounts": [{"name": "data", "mountPath": "/var/lib/postgresql"}],
                        }
                    ],
                    "volumes": [{"name": "data", "emptyDir": {}}],
                },
            },
        )
        service = core.create_namespaced_service(
            namespace,
            {
                "metadata": {"name": "postgres"},
                "spec": {"selector": labels, "ports": [{"port": POSTGRES_PORT, "targetPort": POSTGRES_PORT}]},
            },
        )

        def pod_ip() -> str | None:
            pod = core.read_namespaced_pod("postgres", namespace)
            ready = any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
            return pod.status.pod_ip if ready else None

        yield wait_for("the PostgreSQL pod", pod_ip), service.spec.cluster_ip
    finally:
        core.delete_namespace(namespace)


def binding(name: str, db: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "SandboxBinding",
        "metadata": {"name": name},
        "spec": {"db": db},
    }


def run_execution(custom: client.CustomObjectsApi, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Creates the Execution and returns its status once it ended."""
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Execution", "metadata": {"name": name}, "spec": spec}
    custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "executions", body)

    def ended() -> dict[str, Any] | None:
        status = custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "executions", name).get("status", {})
        return status if status.get("phase") in TERMINAL else None

    status: dict[str, Any] = wait_for(f"Execution {name}", ended)
    return status


def timed(call: Callable[[int], Any], calls: int, warmup: int) -> list[float]:
    for i in range(warmup):
        call(i)
    timings = []
    for i in range(calls):
        start = time.perf_counter()
        call(i)
        timings.append((time.perf_counter() - start) * 1000)
    return timings


def sqlite_direct(calls: int, warmup: int) -> list[float]:
    """The query through Python's sqlite3 on a database file on this host, one connection."""
    with tempfile.TemporaryDirectory() as directory:
        connection = sqlite3.connect(Path(directory) / "bench.sqlite3")
        try:
            return timed(lambda i: connection.execute(QUERY["sqlite"], [i]).fetchall(), calls, warmup)
        finally:
            connection.close()


async def postgres_direct(pod_ip: str, password: str, calls: int, warmup: int) -> list[float]:
    """The query with asyncpg from this host to the PostgreSQL pod's IP, one connection."""
    connection = await asyncpg.connect(host=pod_ip, port=POSTGRES_PORT, user="postgres", password=password)
    try:
        for i in range(warmup):
            await connection.fetch(QUERY["postgres"], i)
        timings = []
        for i in range(calls):
            start = time.perf_counter()
            await connection.fetch(QUERY["postgres"], i)
            timings.append((time.perf_counter() - start) * 1000)
        return timings
    finally:
        await connection.close()


def broker_throttling(core: client.CoreV1Api) -> dict[str, int]:
    """The broker container's CFS counters (cgroup v1 cpu.stat): periods it was throttled in, and for how long."""
    pod = core.list_namespaced_pod(NAMESPACE, label_selector=BROKER_SELECTOR).items[0].metadata.name
    text = stream(
        core.connect_get_namespaced_pod_exec,
        pod,
        NAMESPACE,
        command=["cat", "/sys/fs/cgroup/cpu/cpu.stat"],
        stderr=True,
        stdout=True,
    )
    return {key: int(value) for key, value in (line.split() for line in text.splitlines() if line.strip())}


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=100, help="measured calls of each engine")
    parser.add_argument("--warmup", type=int, default=5, help="unmeasured calls of each engine first")
    args = parser.parse_args()

    config.load_kube_config()
    core, custom = client.CoreV1Api(), client.CustomObjectsApi()
    suffix = uuid.uuid4().hex[:6]
    password = secrets.token_urlsafe(18)
    sqlite_name, postgres_name, secret_name = f"bench-sqlite-{suffix}", f"bench-pg-{suffix}", f"bench-pg-{suffix}"
    execution = f"bench-binding-{suffix}"
    made: list[tuple[str, str]] = []  # (plural, name) of the objects made in NAMESPACE, deleted at the end
    try:
        with postgres_server(core, f"bench-pg-{suffix}", password) as (pod_ip, cluster_ip):
            dsn = f"postgresql://postgres:{password}@{cluster_ip}:{POSTGRES_PORT}/postgres"
            core.create_namespaced_secret(
                NAMESPACE,
                {"metadata": {"name": secret_name}, "data": {"dsn": base64.b64encode(dsn.encode()).decode()}},
            )
            made.append(("secrets", secret_name))
            for name, db in (
                (sqlite_name, {"engine": "sqlite"}),
                (postgres_name, {"engine": "postgres", "dsnSecretRef": {"name": secret_name, "key": "dsn"}}),
            ):
                custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "sandboxbindings", binding(name, db))
                made.append(("sandboxbindings", name))
            spec = {
                "language": "python",
                "code": PROGRAM,
                "bindings": [sqlite_name, postgres_name],
                "input": {
                    "queries": {sqlite_name: QUERY["sqlite"], postgres_name: QUERY["postgres"]},
                    "calls": args.calls,
                    "warmup": args.warmup,
                },
                "timeoutSeconds": 300,
            }
            made.append(("executions", execution))
            throttling_before = broker_throttling(core)
            status = run_execution(custom, execution, spec)
            throttling_after = broker_throttling(core)
            if status.get("phase") != "Succeeded":
                sys.exit(f"Execution {execution} ended {status.get('phase')}: {status}")
            through_broker = {"sqlite": status["result"][sqlite_name], "postgres": status["result"][postgres_name]}
            direct = {
                "sqlite": sqlite_direct(args.calls, args.warmup),
                "postgres": asyncio.run(postgres_direct(pod_ip, password, args.calls, args.warmup)),
            }
    finally:
        for plural, name in reversed(made):
            if plural == "secrets":
                core.delete_namespaced_secret(name, NAMESPACE)
            else:
                try:
                    custom.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, plural, name)
                except client.ApiException as error:
                    if error.status != 404:
                        raise

    print(f"`{QUERY['sqlite']}` / `{QUERY['postgres']}`, {args.calls} calls each after {args.warmup} unmeasured")
    print(f"{'':9s} {'binding p50':>12s} {'p95':>8s}   {'direct p50':>11s} {'p95':>9s}   {'ratio p50':>9s} {'p95':>6s}")
    for engine in ("sqlite", "postgres"):
        binding_ms, direct_ms = through_broker[engine], direct[engine]
        b50, b95 = statistics.median(binding_ms), percentile(binding_ms, 0.95)
        d50, d95 = statistics.median(direct_ms), percentile(direct_ms, 0.95)
        print(
            f"{engine:9s} {b50:10.2f}ms {b95:6.2f}ms   {d50:9.4f}ms {d95:7.4f}ms   {b50 / d50:8.0f}x {b95 / d95:5.0f}x"
        )
    broker = client.AppsV1Api().read_namespaced_deployment(BROKER, NAMESPACE).spec.template.spec.containers[0]
    print(
        f"(Execution {execution}: {status.get('sandbox')} sandbox, {status.get('durationMs')} ms; "
        f"broker limits {broker.resources.limits})"
    )
    periods = throttling_after["nr_throttled"] - throttling_before["nr_throttled"]
    seconds = (throttling_after["throttled_time"] - throttling_before["throttled_time"]) / 1e9
    print(f"broker CPU-throttled meanwhile (its cgroup's cpu.stat): {periods} periods of 100 ms, {seconds:.2f}s in all")


if __name__ == "__main__":
    main()
