"""Benchmark (prints figures, not a test): what the HTTP gateway adds to an Execution, and a burst through it.

1. The same trivial Python Execution, created and awaited by a watch directly against the API server with a
   service account's token (what the gateway itself does) and through `POST /execute` (wait) with the same token,
   alternating run by run; the added time is the median of the paired differences.
2. `--concurrent` POST /execute calls at once: every answer checked, the gateway's RSS before and after.

The gateway runs as a local process (`codeexec gateway --server ...`) against the local cluster, so the figures
are the gateway's own, without kubectl port-forward; a local operator handles the benchmark's namespace.
Usage: .venv/bin/python -m tests.bench.gateway_overhead [-n 30] [--concurrent 50]"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import aiohttp
from kubernetes import client as kube_client
from kubernetes import config as kube_config

from codeexec.client.kubeapi import Connection, KubeApi
from codeexec.client.shapes import ExecuteRequest
from codeexec.client.transports import KubeTransport
from tests.e2e.executions import OperatorProcess, delete_executions, install_crds_and_runtimes, operator_log_dir
from tests.e2e.kube import ENV, kubectl, wait_until

CODE = "print('hello')\n"
# Small sandboxes, so a burst runs several at a time on the 2-core node.
RESOURCES = {"cpu": "100m", "memory": "128Mi"}
ROLE = {
    "apiVersion": "rbac.authorization.k8s.io/v1",
    "kind": "Role",
    "metadata": {"name": "bench-executions"},
    "rules": [
        {
            "apiGroups": ["codeexec.io"],
            "resources": ["executions"],
            "verbs": ["create", "get", "list", "watch", "delete"],
        }
    ],
}


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def direct(api: KubeApi) -> float:
    started = time.perf_counter()
    result = await KubeTransport(api).execute(ExecuteRequest(code=CODE, language="python", resources=RESOURCES))
    assert result.stdout == "hello\n", result
    return time.perf_counter() - started


async def through_gateway(session: aiohttp.ClientSession, url: str, token: str) -> float:
    started = time.perf_counter()
    body = {"code": CODE, "language": "python", "resources": RESOURCES}
    async with session.post(url + "/execute", json=body, headers={"Authorization": f"Bearer {token}"}) as answer:
        result = await answer.json()
    assert answer.status == 200 and result["stdout"] == "hello\n", result
    return time.perf_counter() - started


async def measure(url: str, server: Connection, token: str, runs: int, concurrent: int, gateway_pid: int) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        api = KubeApi(session, server)
        await through_gateway(session, url, token)  # warm-up: the token's namespace, connections
        await direct(api)
        pairs = []
        for _ in range(runs):
            pairs.append((await direct(api), await through_gateway(session, url, token)))
        direct_times = [d for d, _ in pairs]
        gateway_times = [g for _, g in pairs]
        added = [g - d for d, g in pairs]
        print(f"runs: {runs} each, alternating")
        for what, times in (("direct (create + watch)", direct_times), ("POST /execute (wait)", gateway_times)):
            print(f"{what}: p50 {statistics.median(times):.3f} s, p95 {percentile(times, 0.95):.3f} s")
        print(f"added by the gateway: p50 {statistics.median(added) * 1000:.0f} ms (median of paired differences)")

        before = rss_mib(gateway_pid)
        started = time.perf_counter()
        answers = await asyncio.gather(
            *(through_gateway(session, url, token) for _ in range(concurrent)), return_exceptions=True
        )
        failures = [a for a in answers if isinstance(a, BaseException)]
        print(f"concurrent POST /execute: {concurrent - len(failures)}/{concurrent} answered correctly "
              f"in {time.perf_counter() - started:.1f} s; gateway RSS {before:.0f} MiB before, "
              f"{rss_mib(gateway_pid):.0f} MiB after")  # fmt: skip
        for failure in failures[:3]:
            print(f"  failure: {failure!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=30)
    parser.add_argument("--concurrent", type=int, default=50)
    args = parser.parse_args()

    configuration = kube_client.Configuration()
    kube_config.load_kube_config(config_file=ENV["KUBECONFIG"], client_configuration=configuration)
    install_crds_and_runtimes()
    namespace = f"e2e-op-gwbench-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", namespace)
    operator = OperatorProcess(operator_log_dir() / f"operator-{namespace}.log", {"CODEEXEC_NAMESPACES": namespace})
    gateway: subprocess.Popen[bytes] | None = None
    try:
        kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(ROLE))
        kubectl("create", "serviceaccount", "bench", "-n", namespace)
        kubectl(
            "create",
            "rolebinding",
            "bench",
            "--role=bench-executions",
            f"--serviceaccount={namespace}:bench",
            "-n",
            namespace,
        )
        token = kubectl("create", "token", "bench", "-n", namespace).strip()
        operator.start()
        port = 18000 + uuid.uuid4().int % 1000
        gateway = subprocess.Popen(
            [sys.executable, "-c", "from codeexec.cli import main; main()", "gateway", "--port", str(port),
             "--host", "127.0.0.1", "--server", configuration.host,
             "--certificate-authority", configuration.ssl_ca_cert, "--max-waits-per-caller", str(args.concurrent)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _healthy(url), 30, "the local gateway")
        # The direct side uses the token, not the admin's client certificate: the same identity both ways.
        trust = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
        server = Connection(configuration.host, trust, token, namespace)
        asyncio.run(measure(url, server, token, args.runs, args.concurrent, gateway.pid))
    finally:
        if gateway is not None:
            gateway.terminate()
            gateway.wait(10)
        delete_executions(namespace)
        operator.stop()
        kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


if __name__ == "__main__":
    main()
