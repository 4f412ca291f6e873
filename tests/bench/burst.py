"""Benchmark: a burst of N trivial Python Executions created at once against the N plain Kubernetes Jobs a user
would write instead, both in the same run, printed side by side (issue 8, "Measured").

Executions: one `kubectl create -f` of a multi-document file of N Executions (each prints its own name), handled
by a local operator (python -m codeexec run, as the e2e session runs it) watching only the benchmark's namespace;
--no-operator uses one already running (e.g. the installed chart's, watching --namespace).
Jobs: one `kubectl create -f` of a file holding, for each, what the operator would make by hand with its own
builders: the ConfigMap with the code, the NetworkPolicy, and a Job (backoffLimit 0) whose pod template is the
sandbox pod (same image, runtimeClassName gvisor, restartPolicy Never). Two settings, each its own run of N Jobs
(--jobs): "same", the sandbox pod unchanged (the Executions' cpu/memory, requests = limits), and "issue", the Job
issue 8 measured as what a user writes (its resources only `limits: {cpu: 1}` and the sandbox's memory limit;
Kubernetes sets requests = limits). The Executions run first, then the Jobs, on the same node.

Reported for both: wall time (create → the last one finished, as seen by a watch), how many Succeeded with the
right stdout (Executions: status.stdout; Jobs: the report in the pod's log, read after the wall time), and the
wait from creation until the sandbox pod is bound to the node (p50/p95). For Executions also: the queue wait
(creation → the operator creates the pod, p50/p95), API writes per Execution (every version of the object a
watch saw after its creation: status patches plus metadata writes such as finalizers and Kopf's annotations),
exactly one pod each, and the operator's resident memory (VmRSS) at the end and, with --stored, after that many
more finished Executions are stored (cheap ones: rejected at once for a timeoutSeconds above the maximum).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch
from urllib3.exceptions import ProtocolError

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from codeexec import builders  # noqa: E402
from codeexec.builders import ExecutionRef  # noqa: E402
from codeexec.config import OperatorConfig  # noqa: E402
from codeexec.report import parse_report  # noqa: E402
from codeexec.validation import Plan, parse_runtimes, plan_execution  # noqa: E402
from codeexec.vocabulary import MANAGED_BY_LABEL, SANDBOX_CONTAINER  # noqa: E402
from tests.bench.setup import bench  # noqa: E402
from tests.e2e.bursts import burst_failures, burst_manifests, create_at_once, outcome  # noqa: E402
from tests.e2e.executions import (  # noqa: E402
    EXECUTION_UID_LABEL,
    TERMINAL_PHASES,
    execution_manifest,
)

GROUP, VERSION = "codeexec.io", "v1alpha1"
BURST_TIMEOUT = 1800
# Above every maximum (the operator's default max_timeout_seconds is 600): rejected at once, no pod.
REJECTED_TIMEOUT = 3600


class Recorder:
    """Every event of one watch, with the moment it arrived, from a thread started at once; a watch the server
    ends early is resumed from the last resourceVersion seen."""

    def __init__(self, list_function: Callable[..., Any], *args: Any) -> None:
        self.events: list[tuple[float, str, Any]] = []
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._watch = watch.Watch()
        self._thread = threading.Thread(target=self._run, args=(list_function, *args), daemon=True)
        self._thread.start()

    def _run(self, list_function: Callable[..., Any], *args: Any) -> None:
        version = None
        while not self._stopped.is_set():
            try:
                for event in self._watch.stream(list_function, *args, resource_version=version):
                    item = event["object"]
                    version = (
                        item["metadata"]["resourceVersion"]
                        if isinstance(item, dict)
                        else item.metadata.resource_version
                    )
                    with self._lock:
                        self.events.append((time.monotonic(), event["type"], item))
            except (ProtocolError, OSError):
                time.sleep(1)

    def snapshot(self) -> list[tuple[float, str, Any]]:
        with self._lock:
            return list(self.events)

    def stop(self) -> None:
        self._stopped.set()
        self._watch.stop()


def first_seen(events: list[tuple[float, str, Any]], key: Callable[[Any], str | None]) -> dict[str, float]:
    """key(object) → when an event first showed it (objects whose key is None are left out)."""
    seen: dict[str, float] = {}
    for at, _, item in events:
        found = key(item)
        if found is not None:
            seen.setdefault(found, at)
    return seen


def bound_pod_owner(label: str) -> Callable[[Any], str | None]:
    """The pod's `label` value once the pod is bound to a node."""
    return lambda pod: (pod.metadata.labels or {}).get(label) if pod.spec.node_name else None


def percentiles(values: list[float]) -> str:
    if not values:
        return "n/a"
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"p50 {statistics.median(ordered):.1f}s p95 {p95:.1f}s"


def rss_mib(pid: int | None) -> str:
    if pid is None:
        return "n/a (operator not started here)"
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return f"{int(line.split()[1]) / 1024:.0f} MiB"
    return "n/a"


def wait_for(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + BURST_TIMEOUT
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.5)


def run_executions(core: client.CoreV1Api, custom: client.CustomObjectsApi, namespace: str, n: int) -> dict[str, Any]:
    manifests = burst_manifests("burst", n)
    names = {manifest["metadata"]["name"] for manifest in manifests}
    versions = Recorder(custom.list_namespaced_custom_object, GROUP, VERSION, namespace, "executions")
    pods = Recorder(core.list_namespaced_pod, namespace)
    started = time.monotonic()
    create_at_once(namespace, manifests)

    def latest() -> dict[str, dict[str, Any]]:
        return {item["metadata"]["name"]: item for _, _, item in versions.snapshot()}

    wait_for(lambda: all(outcome(latest().get(name)).split("/")[0] in TERMINAL_PHASES for name in names), "Executions")
    events = versions.snapshot()
    finished_at = max(at for at, _, item in events if outcome(item).split("/")[0] in TERMINAL_PHASES)
    versions.stop()
    pods.stop()
    pod_events = pods.snapshot()

    created = first_seen(events, lambda item: item["metadata"]["uid"])
    pod_created = first_seen(pod_events, lambda pod: (pod.metadata.labels or {}).get(EXECUTION_UID_LABEL))
    bound = first_seen(pod_events, bound_pod_owner(EXECUTION_UID_LABEL))
    pods_per_execution = Counter(
        (pod.metadata.labels or {}).get(EXECUTION_UID_LABEL)
        for pod in {p.metadata.uid: p for _, _, p in pod_events}.values()
    )
    writes: dict[str, set[str]] = {}
    status_writes: dict[str, int] = Counter()
    last_status: dict[str, Any] = {}
    for _, _, item in events:
        execution_uid = item["metadata"]["uid"]
        writes.setdefault(execution_uid, set()).add(item["metadata"]["resourceVersion"])
        status = item.get("status")
        if execution_uid in last_status and status != last_status[execution_uid]:
            status_writes[execution_uid] += 1
        last_status[execution_uid] = status
    finished = latest()
    failures = burst_failures(manifests, finished, {uid: count for uid, count in pods_per_execution.items() if uid})
    writes_after_creation = [len(found) - 1 for found in writes.values()]
    return {
        "wall": finished_at - started,
        "ok": n - len({line.split(":")[0] for line in failures}),
        "outcomes": dict(Counter(outcome(item) for item in finished.values())),
        "queue_wait": [pod_created[uid] - created[uid] for uid in created if uid in pod_created],
        "bound_wait": [bound[uid] - created[uid] for uid in created if uid in bound],
        "writes": writes_after_creation,
        "status_writes": [status_writes[uid] for uid in writes],
        "failures": failures,
    }


# The Job settings --jobs knows: the resources of the sandbox container (None: the sandbox pod's own).
JOB_SETTINGS: dict[str, Callable[[Plan], dict[str, Any] | None]] = {
    "same": lambda plan: None,
    "issue": lambda plan: {"limits": {"cpu": "1", "memory": str(plan.memory_bytes)}},
}


def job_objects(namespace: str, name: str, plan: Plan, probe: str, setting: str) -> list[dict[str, Any]]:
    """What a user would write for one program: the operator's ConfigMap and NetworkPolicy, and a Job named
    after the program that never retries, its pod template the operator's sandbox pod (with the resources of
    `setting`)."""
    ref = ExecutionRef(namespace, name, str(uuid.uuid4()))
    pod = builders.pod(ref, plan, OperatorConfig(), isolation_probe=probe)
    resources = JOB_SETTINGS[setting](plan)
    if resources is not None:
        for container in pod["spec"]["containers"]:
            if container["name"] == SANDBOX_CONTAINER:
                container["resources"] = resources
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "template": {"metadata": {"labels": builders.labels(ref)}, "spec": pod["spec"]}},
    }
    return [builders.configmap(ref, plan), builders.networkpolicy(ref), job]


def job_done(job: Any) -> str | None:
    conditions = (job.status.conditions if job.status else None) or []
    return next((c.type for c in conditions if c.type in ("Complete", "Failed") and c.status == "True"), None)


def run_jobs(
    core: client.CoreV1Api,
    batch: client.BatchV1Api,
    namespace: str,
    plans: Mapping[str, Plan],
    probe: str,
    setting: str,
) -> dict[str, Any]:
    objects = [item for name, plan in plans.items() for item in job_objects(namespace, name, plan, probe, setting)]
    jobs = Recorder(batch.list_namespaced_job, namespace)
    pods = Recorder(core.list_namespaced_pod, namespace)
    started = time.monotonic()
    create_at_once(namespace, objects)

    def outcomes() -> dict[str, str | None]:
        return {job.metadata.name: job_done(job) for _, _, job in jobs.snapshot()}

    wait_for(lambda: len(outcomes()) == len(plans) and all(outcomes().values()), "Jobs")
    events = jobs.snapshot()
    finished_at = max(at for at, _, job in events if job_done(job))
    jobs.stop()
    pods.stop()
    created = first_seen(events, lambda job: job.metadata.name)
    bound = first_seen(pods.snapshot(), bound_pod_owner("job-name"))
    ok = 0
    for pod in core.list_namespaced_pod(namespace).items:
        report = parse_report(core.read_namespaced_pod_log(pod.metadata.name, namespace, container=SANDBOX_CONTAINER))
        program = pod.metadata.labels["job-name"]
        if report is not None and report.exit_code == 0 and report.stdout.text == f"{program}\n":
            ok += 1
    return {
        "wall": finished_at - started,
        "ok": ok,
        "outcomes": dict(Counter(outcomes().values())),
        "bound_wait": [bound[name] - created[name] for name in created if name in bound],
    }


def store_rejected(custom: client.CustomObjectsApi, namespace: str, count: int) -> None:
    """`count` more finished Executions, cheaply: rejected at once (timeoutSeconds above the maximum)."""
    code = "print('never runs')\n"
    manifests = [
        execution_manifest(f"stored-{index:04d}", "python", code, timeoutSeconds=REJECTED_TIMEOUT)
        for index in range(count)
    ]
    for first in range(0, count, 200):
        create_at_once(namespace, manifests[first : first + 200])

    def all_rejected() -> bool:
        items = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "executions")["items"]
        return sum(outcome(item).startswith("Rejected/") for item in items) >= count

    wait_for(all_rejected, f"{count} rejected Executions")


def row(label: str, *cells: object) -> str:
    return f"{label:36s}" + "".join(f"{cell!s:>30s}" for cell in cells)


def clear_jobs(core: client.CoreV1Api, batch: client.BatchV1Api, namespace: str) -> None:
    """The namespace empty of one run's Jobs, their pods and their ConfigMaps/NetworkPolicies, for the next."""
    batch.delete_collection_namespaced_job(namespace, propagation_policy="Background")
    core.delete_collection_namespaced_pod(namespace, grace_period_seconds=0)
    core.delete_collection_namespaced_config_map(namespace, label_selector=MANAGED_BY_LABEL)
    client.NetworkingV1Api().delete_collection_namespaced_network_policy(namespace)
    wait_for(lambda: not core.list_namespaced_pod(namespace).items, f"the pods of {namespace} to go")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=100, help="Executions and Jobs in the burst")
    parser.add_argument("--stored", type=int, default=0, help="then store this many finished Executions, for RSS")
    parser.add_argument("--no-operator", action="store_true", help="use a running operator that watches --namespace")
    parser.add_argument("--namespace", help="namespace of the Executions (default: a fresh e2e-op-bench-*)")
    parser.add_argument(
        "--jobs",
        type=lambda text: text.split(","),
        default=list(JOB_SETTINGS),
        help=f"the Job settings to run, comma-separated, each a run of N Jobs (default: all of {list(JOB_SETTINGS)})",
    )
    args = parser.parse_args()

    config.load_kube_config()
    core, custom, batch = client.CoreV1Api(), client.CustomObjectsApi(), client.BatchV1Api()
    with bench(core, args.namespace, not args.no_operator) as setup:
        runtimes = parse_runtimes(custom.list_cluster_custom_object(GROUP, VERSION, "runtimes")["items"])
        plans = {}
        for manifest in burst_manifests("burst", args.n):
            plan = plan_execution(manifest["spec"], runtimes, OperatorConfig(), True)
            assert isinstance(plan, Plan), plan
            plans[manifest["metadata"]["name"]] = plan
        operator_pid = setup.operator.pid if setup.operator else None

        ex = run_executions(core, custom, setup.execution_namespace, args.n)
        rss_end = rss_mib(operator_pid)
        rss_stored = "not measured (--stored 0)"
        if args.stored:
            store_rejected(custom, setup.execution_namespace, args.stored)
            rss_stored = f"{rss_mib(operator_pid)} with {args.n + args.stored} stored"
        jobs = {}
        for index, setting in enumerate(args.jobs):
            if index:
                clear_jobs(core, batch, setup.job_namespace)
            jobs[setting] = run_jobs(core, batch, setup.job_namespace, plans, setup.isolation_probe, setting)

    plan = next(iter(plans.values()))
    print(
        f"\nburst of {args.n}: python print(name), cpu {plan.cpu_millis}m, memory {plan.memory_bytes // 2**20}Mi, "
        f"runtimeClassName {OperatorConfig().runtime_class}; Executions via "
        f"{'a running operator' if args.no_operator else 'a local operator process'}"
    )
    for setting in args.jobs:
        print(f"Jobs ({setting}): sandbox container resources {JOB_SETTINGS[setting](plan) or 'as the Executions'}")
    runs = [ex, *jobs.values()]
    none = ["-"] * len(jobs)
    print(row("", "Executions", *(f"Jobs ({setting})" for setting in jobs)))
    print(row("wall time", *(f"{run['wall']:.1f}s" for run in runs)))
    print(row("Succeeded, right stdout", *(f"{run['ok']}/{args.n}" for run in runs)))
    print(row("outcomes", *(run["outcomes"] for run in runs)))
    print(row("creation → pod bound to the node", *(percentiles(run["bound_wait"]) for run in runs)))
    print(row("queue wait (creation → pod created)", percentiles(ex["queue_wait"]), *none))
    print(row("API writes per Execution, mean/max", f"{statistics.mean(ex['writes']):.1f}/{max(ex['writes'])}", *none))
    status_writes = f"{statistics.mean(ex['status_writes']):.1f}/{max(ex['status_writes'])}"
    print(row("  of which status changes, mean/max", status_writes, *none))
    print(row("operator RSS at the end", rss_end, *none))
    print(row("operator RSS, stored Executions", rss_stored, *none))
    for setting, run in jobs.items():
        print(f"wall time ratio Executions/Jobs ({setting}): {ex['wall'] / run['wall']:.2f} (target ≤ 0.67)")
    for line in ex["failures"][:20]:
        print(f"  {line}")


if __name__ == "__main__":
    main()
