"""Benchmark: apply → Succeeded latency of a trivial Python Execution against a plain Kubernetes Job running
the very same sandbox pod (built by codeexec.builders), p50/p95 over N runs each, measured in the same run.

The Execution path: create the Execution → the operator validates it, creates ConfigMap, NetworkPolicy and
pod → the pod runs → the operator reads the report into the status → phase Succeeded seen by a watch.
The Job path: create the same ConfigMap and NetworkPolicy and a Job whose pod template is the builders'
pod → Job Complete seen by a watch → the pod's log read (and its report parsed, to prove the run).
The two alternate run by run, so both see the same node. By default a local operator (python -m codeexec
run) is started, watching only the benchmark's own namespace; --no-operator uses one already running.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path

from kubernetes import client, config, watch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from codeexec import builders  # noqa: E402
from codeexec.builders import ExecutionRef  # noqa: E402
from codeexec.config import OperatorConfig  # noqa: E402
from codeexec.report import parse_report  # noqa: E402
from codeexec.validation import Plan, parse_runtimes, plan_execution  # noqa: E402
from codeexec.vocabulary import SANDBOX_CONTAINER  # noqa: E402
from tests.bench.setup import bench  # noqa: E402

GROUP, VERSION = "codeexec.io", "v1alpha1"
SPEC = {"language": "python", "code": "print('hello')\n", "timeoutSeconds": 30}
WAIT_SECONDS = 180


def run_execution(custom: client.CustomObjectsApi, namespace: str) -> float:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Execution", "metadata": {"name": name}, "spec": SPEC}
    started = time.monotonic()
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "executions", body)
    phase = None
    for event in watch.Watch().stream(
        custom.list_namespaced_custom_object,
        GROUP,
        VERSION,
        namespace,
        "executions",
        field_selector=f"metadata.name={name}",
        timeout_seconds=WAIT_SECONDS,
    ):
        phase = (event["object"].get("status") or {}).get("phase")
        if phase in ("Succeeded", "Failed", "TimedOut", "Rejected"):
            break
    elapsed = time.monotonic() - started
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "executions", name)
    if phase != "Succeeded":
        raise RuntimeError(f"Execution {name} ended {phase}")
    return elapsed


def run_job(
    core: client.CoreV1Api,
    networking: client.NetworkingV1Api,
    batch: client.BatchV1Api,
    namespace: str,
    plan: Plan,
    probe: str,
) -> float:
    """The operator's work done by hand with the same builders, the pod under a Job instead."""
    ref = ExecutionRef(namespace, f"job-{uuid.uuid4().hex[:8]}", str(uuid.uuid4()))
    pod = builders.pod(ref, plan, OperatorConfig(), isolation_probe=probe)
    name = builders.child_name(ref)
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "backoffLimit": 0,
            "template": {"metadata": {"labels": builders.labels(ref)}, "spec": pod["spec"]},
        },
    }
    started = time.monotonic()
    core.create_namespaced_config_map(namespace, builders.configmap(ref, plan))
    networking.create_namespaced_network_policy(namespace, builders.networkpolicy(ref))
    batch.create_namespaced_job(namespace, job)
    outcome = None
    for event in watch.Watch().stream(
        batch.list_namespaced_job, namespace, field_selector=f"metadata.name={name}", timeout_seconds=WAIT_SECONDS
    ):
        conditions = event["object"].status.conditions or []
        outcome = next((c.type for c in conditions if c.type in ("Complete", "Failed") and c.status == "True"), None)
        if outcome:
            break
    pods = core.list_namespaced_pod(namespace, label_selector=f"job-name={name}").items
    log = core.read_namespaced_pod_log(pods[0].metadata.name, namespace, container=SANDBOX_CONTAINER)
    elapsed = time.monotonic() - started
    report = parse_report(log)
    batch.delete_namespaced_job(name, namespace, propagation_policy="Background")
    core.delete_namespaced_config_map(name, namespace)
    networking.delete_namespaced_network_policy(name, namespace)
    if outcome != "Complete" or report is None or report.exit_code != 0 or report.stdout.text != "hello\n":
        raise RuntimeError(f"Job {name} ended {outcome}, report {report}")
    return elapsed


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def summary(label: str, samples: list[float]) -> str:
    return (
        f"{label:9s} over {len(samples)}: p50 {statistics.median(samples):.2f}s p95 {percentile(samples, 0.95):.2f}s "
        f"min {min(samples):.2f}s max {max(samples):.2f}s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured runs of each first")
    parser.add_argument("--no-operator", action="store_true", help="use a running operator that watches --namespace")
    parser.add_argument("--namespace", help="namespace of the Executions (default: a fresh e2e-op-bench-*)")
    args = parser.parse_args()

    config.load_kube_config()
    core, custom = client.CoreV1Api(), client.CustomObjectsApi()
    networking, batch = client.NetworkingV1Api(), client.BatchV1Api()
    with bench(core, args.namespace, not args.no_operator) as setup:
        runtimes = parse_runtimes(custom.list_cluster_custom_object(GROUP, VERSION, "runtimes")["items"])
        plan = plan_execution(SPEC, runtimes, OperatorConfig(), True)
        assert isinstance(plan, Plan), plan
        exec_ns, job_ns, probe = setup.execution_namespace, setup.job_namespace, setup.isolation_probe

        for _ in range(args.warmup):
            run_execution(custom, exec_ns)
            run_job(core, networking, batch, job_ns, plan, probe)
        results: dict[str, list[float]] = {"execution": [], "job": []}
        for index in range(args.runs):
            results["execution"].append(run_execution(custom, exec_ns))
            results["job"].append(run_job(core, networking, batch, job_ns, plan, probe))
            print(f"run {index + 1:2d}: execution {results['execution'][-1]:.2f}s job {results['job'][-1]:.2f}s")

    print(summary("Execution", results["execution"]))
    print(summary("Job", results["job"]))
    p50 = statistics.median(results["execution"]) / statistics.median(results["job"])
    p95 = percentile(results["execution"], 0.95) / percentile(results["job"], 0.95)
    print(f"Execution/Job ratio: p50 {p50:.2f} p95 {p95:.2f}")


if __name__ == "__main__":
    main()
