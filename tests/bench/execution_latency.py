"""Benchmark: create → Succeeded latency of a trivial Python Execution, as a watching user sees it, against a
plain Kubernetes Job running the very same sandbox pod (built by codeexec.builders), p50/p95 over N runs each,
measured in the same run, and where the time goes.

The Execution path: create the Execution → the operator validates it, creates ConfigMap, NetworkPolicy and
pod → the pod runs → the operator reads the report into the status → phase Succeeded seen by a watch.
The Job path: create the same ConfigMap and NetworkPolicy and a Job whose pod template is the builders'
pod → Job Complete seen by a watch → the pod's log read (and its report parsed, to prove the run).

Executions and Jobs alternate, so both see the same node: one creation every --interval seconds (default 1),
but never before the previous run finished, so no run waits for room on the node behind the benchmark's own
(a cold run takes longer than the interval: then they follow each other). Every watch is open before the
first creation; a milestone's time is when a watch event first showed it (this process's monotonic clock), so
the steps of the breakdown add up to the total. By default a local operator (python -m codeexec run) is
started, watching only the benchmark's own namespace; --no-operator uses one already running.

Then the warm path, one language after the other (--warm): a WarmPool of --pool-size (2) pods of that
language is created and filled, and the same trivial program runs as Executions created at the same pace; an
Execution that finds no ready pool pod (the pool refills behind each claim) runs cold, and is counted as a
miss. Last, a burst (--burst 20) created at once against a pool of --burst-pool (5) pods of 250m CPU (five
default-sized pods do not fit the 2-core dev node): every Execution's output, the pods claimed twice (none may
be), the misses and the p50/p95 of create → Succeeded.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from codeexec import builders  # noqa: E402
from codeexec.builders import ExecutionRef  # noqa: E402
from codeexec.config import OperatorConfig  # noqa: E402
from codeexec.report import Report, parse_report  # noqa: E402
from codeexec.validation import Plan, parse_runtimes, plan_execution  # noqa: E402
from codeexec.vocabulary import EXECUTION_LABEL, SANDBOX_CONTAINER  # noqa: E402
from tests.bench.setup import bench  # noqa: E402

GROUP, VERSION = "codeexec.io", "v1alpha1"
SPEC = {"language": "python", "code": "print('hello')\n", "timeoutSeconds": 30}
# The same trivial program per language, printing "hello".
PROGRAMS = {
    "python": "print('hello')\n",
    "javascript": "console.log('hello');\n",
    "typescript": "const greeting: string = 'hello';\nconsole.log(greeting);\n",
}
POOL_READY_SECONDS = 180
GONE = 410
BURST_CPU = "250m"
WAIT_SECONDS = 180
TERMINAL = ("Succeeded", "Failed", "TimedOut", "Rejected")
JOB_NAME_LABEL = "job-name"
EXECUTION, JOB = "execution", "job"
WARM = "warm"  # kinds "warm python", ...: Executions served from a pool
BURST = f"{WARM} burst"

# Each kind's milestones in the order they happen (after "created", taken just before the first create call),
# with the name of the step that ends there. "done" is what the user waits for.
STEPS = {
    EXECUTION: {
        "accepted": "operator: validated, phase Pending",
        "pod": "operator: (queue,) ConfigMap, NetworkPolicy, pod",
        "running": "kubelet: sandbox up, running seen",
        "exited": "sandbox: fence, program, exit seen",
        "done": "operator: report read, Succeeded",
    },
    WARM: {
        "accepted": "operator: validated, phase Pending",
        "pod": "operator: warm pod claimed",
        "running": "running seen",
        "exited": "sandbox: program, exit seen",
        "done": "operator: report read, Succeeded",
    },
    JOB: {
        "pod": "job controller: pod created",
        "running": "kubelet: sandbox up, running seen",
        "exited": "sandbox: fence, program, exit seen",
        "pod-succeeded": "kubelet: pod phase Succeeded",
        "complete": "job controller: Job Complete",
        "done": "benchmark: log read",
    },
}


@dataclass
class Run:
    kind: str
    name: str
    measured: bool  # False for warm-up runs
    seen: dict[str, float] = field(default_factory=dict)  # milestone → monotonic time first seen
    outcome: str | None = None
    report: Report | None = None  # the runner's, read from the pod's log

    def latency(self) -> float:
        return self.seen["done"] - self.seen["created"]


class Recorder:
    """The runs by name, and the time each milestone was first seen."""

    def __init__(self) -> None:
        self.runs: dict[str, Run] = {}
        self._lock = threading.Condition()

    def add(self, kind: str, name: str, measured: bool) -> None:
        with self._lock:
            self.runs[name] = Run(kind, name, measured, {"created": time.monotonic()})

    def mark(self, name: str, milestone: str, outcome: str | None = None) -> Run | None:
        """Records `milestone` (with the run's `outcome` at "done") the first time it is seen, and returns the
        run then (None otherwise). A step no watch event showed (a container that started and ended between
        two status updates is never seen running) gets the time of the milestone after it."""
        now = time.monotonic()
        with self._lock:
            run = self.runs.get(name)
            if run is None or milestone in run.seen:
                return None
            steps = list(STEPS[steps_of(run.kind)])
            for step in steps[: steps.index(milestone) + 1]:
                run.seen.setdefault(step, now)
            if milestone == "done":
                run.outcome = outcome
            self._lock.notify_all()
            return run

    def wait_done(self, name: str, timeout: float) -> None:
        with self._lock:
            self._lock.wait_for(lambda: "done" in self.runs[name].seen, timeout)


def steps_of(kind: str) -> str:
    return WARM if kind.startswith(WARM) else kind


def watch_forever(
    handle: Callable[[Mapping[str, Any]], None], call: Callable[..., Any], *args: Any, **kwargs: Any
) -> None:
    """Hands every object a watch shows to `handle`, resuming from the last resourceVersion when the API
    server ends the watch. Runs in a daemon thread for the whole benchmark."""
    version = None
    while True:
        try:
            for event in watch.Watch().stream(call, *args, resource_version=version, timeout_seconds=300, **kwargs):
                body = event["raw_object"]
                version = body["metadata"]["resourceVersion"]
                handle(body)
        except client.ApiException as error:
            if error.status != GONE:
                raise
            version = None  # nothing happened for longer than the API server keeps history: list anew


def container_milestone(pod: Mapping[str, Any]) -> str | None:
    statuses = pod.get("status", {}).get("containerStatuses") or []
    state = statuses[0].get("state", {}) if statuses else {}
    if "terminated" in state:
        return "exited"
    if "running" in state:
        return "running"
    return None


def job_manifest(ref: ExecutionRef, plan: Plan, probe: str) -> dict[str, Any]:
    """The Job whose pod template is the operator's own sandbox pod."""
    pod = builders.pod(ref, plan, OperatorConfig(), isolation_probe=probe)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": builders.child_name(ref), "namespace": ref.namespace},
        "spec": {"backoffLimit": 0, "template": {"metadata": {"labels": builders.labels(ref)}, "spec": pod["spec"]}},
    }


class Benchmark:
    """Creates the runs and follows them through their watches; what a run's end needs (log reads, deletes)
    happens on a thread pool, never in a watch thread."""

    def __init__(self, exec_ns: str, job_ns: str, plan: Plan, probe: str) -> None:
        self.core, self.custom = client.CoreV1Api(), client.CustomObjectsApi()
        self.networking, self.batch = client.NetworkingV1Api(), client.BatchV1Api()
        self.exec_ns, self.job_ns, self.plan, self.probe = exec_ns, job_ns, plan, probe
        self.recorder = Recorder()
        self.pool = ThreadPoolExecutor(max_workers=8)
        self.jobs: dict[str, ExecutionRef] = {}
        self.sandboxes: dict[str, str | None] = {}  # Execution → status.sandbox (warm or cold)
        self.claims: dict[str, set[str]] = {}  # pod uid → the Executions it was ever labelled for

    def start_watches(self) -> None:
        watches: list[
            tuple[Callable[[Mapping[str, Any]], None], Callable[..., Any], tuple[Any, ...], dict[str, Any]]
        ] = [
            (
                self.on_execution,
                self.custom.list_namespaced_custom_object,
                (GROUP, VERSION, self.exec_ns, "executions"),
                {},
            ),
            (
                self.on_execution_pod,
                self.core.list_namespaced_pod,
                (self.exec_ns,),
                {"label_selector": EXECUTION_LABEL},
            ),
            (self.on_job, self.batch.list_namespaced_job, (self.job_ns,), {}),
            (self.on_job_pod, self.core.list_namespaced_pod, (self.job_ns,), {"label_selector": JOB_NAME_LABEL}),
        ]
        for handle, call, args, kwargs in watches:
            threading.Thread(target=watch_forever, args=(handle, call, *args), kwargs=kwargs, daemon=True).start()

    # Creating runs.

    def create_execution(self, measured: bool, kind: str = EXECUTION, spec: Mapping[str, Any] = SPEC) -> str:
        name = f"bench-{uuid.uuid4().hex[:8]}"
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Execution", "metadata": {"name": name}, "spec": spec}
        self.recorder.add(kind, name, measured)
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.exec_ns, "executions", body)
        return name

    def fill_pool(self, name: str, language: str, replicas: int, resources: Mapping[str, str] | None = None) -> None:
        spec: dict[str, Any] = {"runtime": language, "replicas": replicas}
        if resources:
            spec["resources"] = dict(resources)
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "WarmPool", "metadata": {"name": name}, "spec": spec}
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.exec_ns, "warmpools", body)
        deadline = time.monotonic() + POOL_READY_SECONDS
        while time.monotonic() < deadline:
            pool = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.exec_ns, "warmpools", name)
            if (pool.get("status") or {}).get("readyReplicas") == replicas:
                return
            time.sleep(0.5)
        raise RuntimeError(f"WarmPool {name} not ready in {POOL_READY_SECONDS} s: {pool.get('status')}")

    def drop_pool(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.exec_ns, "warmpools", name)

    def create_job(self, measured: bool) -> str:
        """The operator's work done by hand with the same builders, the pod under a Job instead."""
        ref = ExecutionRef(self.job_ns, f"job-{uuid.uuid4().hex[:8]}", str(uuid.uuid4()))
        name = builders.child_name(ref)
        self.jobs[name] = ref
        self.recorder.add(JOB, name, measured)
        self.core.create_namespaced_config_map(self.job_ns, builders.configmap(ref, self.plan))
        self.networking.create_namespaced_network_policy(self.job_ns, builders.networkpolicy(ref))
        self.batch.create_namespaced_job(self.job_ns, job_manifest(ref, self.plan, self.probe))
        return name

    # Watch handlers.

    def on_execution(self, body: Mapping[str, Any]) -> None:
        name, status = body["metadata"]["name"], body.get("status", {})
        phase = status.get("phase")
        if phase is not None:
            self.recorder.mark(name, "accepted")
        if phase == "Succeeded" and status.get("stdout") != "hello\n":
            phase = f"Succeeded with stdout {status.get('stdout')!r}"
        self.sandboxes[name] = status.get("sandbox")
        if phase in TERMINAL and self.recorder.mark(name, "done", phase) is not None:
            self.pool.submit(
                self.custom.delete_namespaced_custom_object, GROUP, VERSION, self.exec_ns, "executions", name
            )

    def on_execution_pod(self, pod: Mapping[str, Any]) -> None:
        name = pod["metadata"]["labels"][EXECUTION_LABEL]
        self.claims.setdefault(pod["metadata"]["uid"], set()).add(name)
        self.recorder.mark(name, "pod")
        milestone = container_milestone(pod)
        if milestone is not None and (run := self.recorder.mark(name, milestone)) is not None and milestone == "exited":
            # The operator deletes the pod once it wrote the outcome: the log is read at once (may be missed).
            self.pool.submit(self.read_report, run, self.exec_ns, pod["metadata"]["name"])

    def on_job(self, job: Mapping[str, Any]) -> None:
        name = job["metadata"]["name"]
        conditions = job.get("status", {}).get("conditions") or []
        ended = next(
            (c["type"] for c in conditions if c["type"] in ("Complete", "Failed") and c["status"] == "True"), None
        )
        if ended is not None and (run := self.recorder.mark(name, "complete")) is not None:
            self.pool.submit(self.finish_job, run, ended)

    def on_job_pod(self, pod: Mapping[str, Any]) -> None:
        name = pod["metadata"]["labels"][JOB_NAME_LABEL]
        self.recorder.mark(name, "pod")
        milestone = container_milestone(pod)
        if milestone is not None:
            self.recorder.mark(name, milestone)
        if pod.get("status", {}).get("phase") == "Succeeded":
            self.recorder.mark(name, "pod-succeeded")

    # A run's end.

    def read_report(self, run: Run, namespace: str, pod_name: str) -> None:
        try:
            log = self.core.read_namespaced_pod_log(pod_name, namespace, container=SANDBOX_CONTAINER)
        except client.ApiException:
            return
        run.report = parse_report(log)

    def finish_job(self, run: Run, ended: str) -> None:
        pods = self.core.list_namespaced_pod(self.job_ns, label_selector=f"{JOB_NAME_LABEL}={run.name}").items
        self.read_report(run, self.job_ns, pods[0].metadata.name)
        proven = run.report is not None and run.report.exit_code == 0 and run.report.stdout.text == "hello\n"
        self.recorder.mark(
            run.name, "done", "Succeeded" if ended == "Complete" and proven else f"{ended}: {run.report}"
        )
        self.batch.delete_namespaced_job(run.name, self.job_ns, propagation_policy="Background")
        self.core.delete_namespaced_config_map(run.name, self.job_ns)
        self.networking.delete_namespaced_network_policy(run.name, self.job_ns)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def summary(label: str, samples: list[float]) -> str:
    return (
        f"{label:9s} over {len(samples)}: p50 {statistics.median(samples):.2f}s p95 {percentile(samples, 0.95):.2f}s "
        f"min {min(samples):.2f}s max {max(samples):.2f}s"
    )


def breakdown(kind: str, runs: list[Run]) -> list[str]:
    """p50 and p95 of each step, from one milestone to the next."""
    lines = [f"{kind}: where the time goes (p50 / p95 of each step)"]
    previous = "created"
    for milestone, label in STEPS[steps_of(kind)].items():
        durations = [run.seen[milestone] - run.seen[previous] for run in runs]
        lines.append(f"  {label:48s} {statistics.median(durations):5.2f}s {percentile(durations, 0.95):5.2f}s")
        previous = milestone
    reports = [run.report for run in runs if run.report is not None]
    isolation = [r.network_isolation for r in reports if r.network_isolation is not None]
    if isolation:
        waited = [i.waited_ms / 1000 for i in isolation]
        attempts = [float(i.attempts) for i in isolation]
        lines.append(
            f"  in the sandbox, from {len(isolation)} reports: fence wait {statistics.median(waited):.2f}s "
            f"p95 {percentile(waited, 0.95):.2f}s ({statistics.median(attempts):.0f} probe attempts p50), "
            f"program {statistics.median([r.duration_ms / 1000 for r in reports]):.2f}s p50"
        )
    return lines


def paced(
    benchmark: Benchmark, creators: Sequence[Callable[[bool], str]], runs: int, warmup: int, interval: float
) -> None:
    """Runs the creators in turn, each creation once the run before finished and at least `interval` after it."""
    created = -interval
    for index in range((warmup + runs) * len(creators)):
        time.sleep(max(0.0, created + interval - time.monotonic()))
        created = time.monotonic()
        name = creators[index % len(creators)](index // len(creators) >= warmup)
        benchmark.recorder.wait_done(name, WAIT_SECONDS)


def run_burst(benchmark: Benchmark, size: int, pool_size: int) -> list[str]:
    """`size` Executions created back to back against a filled pool of `pool_size` small pods."""
    resources = {"cpu": BURST_CPU, "memory": "256Mi"}
    benchmark.fill_pool("burst", "python", pool_size, resources)
    spec = {**SPEC, "resources": resources}
    names = [benchmark.create_execution(True, BURST, spec) for _ in range(size)]
    for name in names:
        benchmark.recorder.wait_done(name, WAIT_SECONDS)
    benchmark.drop_pool("burst")
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20, help="measured runs of each kind")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured runs of each kind first")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds at least between two creations")
    parser.add_argument("--warm", default=",".join(PROGRAMS), help="languages of the warm runs, comma-separated")
    parser.add_argument("--pool-size", type=int, default=2, help="pods of each language's WarmPool")
    parser.add_argument("--burst", type=int, default=20, help="Executions of the burst (0: no burst)")
    parser.add_argument("--burst-pool", type=int, default=5, help="pods of the burst's WarmPool")
    parser.add_argument("--no-operator", action="store_true", help="use a running operator that watches --namespace")
    parser.add_argument("--namespace", help="namespace of the Executions (default: a fresh e2e-op-bench-*)")
    args = parser.parse_args()
    languages = [language for language in args.warm.split(",") if language]

    config.load_kube_config()
    core, custom = client.CoreV1Api(), client.CustomObjectsApi()
    with bench(core, args.namespace, not args.no_operator) as setup:
        runtimes = parse_runtimes(custom.list_cluster_custom_object(GROUP, VERSION, "runtimes")["items"])
        plan = plan_execution(SPEC, runtimes, OperatorConfig(), True)
        assert isinstance(plan, Plan), plan
        benchmark = Benchmark(setup.execution_namespace, setup.job_namespace, plan, setup.isolation_probe)
        benchmark.start_watches()
        time.sleep(1)  # the watches' first requests are under way (their initial listings are empty)
        paced(benchmark, (benchmark.create_execution, benchmark.create_job), args.runs, args.warmup, args.interval)
        for language in languages:
            spec = {"language": language, "code": PROGRAMS[language], "timeoutSeconds": 30}
            benchmark.fill_pool(f"warm-{language}", language, args.pool_size)
            create = functools.partial(benchmark.create_execution, kind=f"{WARM} {language}", spec=spec)
            paced(benchmark, (create,), args.runs, args.warmup, args.interval)
            benchmark.drop_pool(f"warm-{language}")
        burst = run_burst(benchmark, args.burst, args.burst_pool) if args.burst else []
        benchmark.pool.shutdown(wait=True)

    runs = [run for run in benchmark.recorder.runs.values() if run.measured]
    failed = [f"{run.name} ({run.kind}): {run.outcome or 'not finished'}" for run in runs if run.outcome != "Succeeded"]
    if failed:
        sys.exit("failed runs:\n" + "\n".join(failed))
    by_kind: dict[str, list[Run]] = {}
    for run in runs:
        by_kind.setdefault(run.kind, []).append(run)
    for index, (execution, job) in enumerate(zip(by_kind[EXECUTION], by_kind[JOB], strict=True)):
        print(f"run {index + 1:2d}: execution {execution.latency():.2f}s job {job.latency():.2f}s")
    latencies = {kind: [run.latency() for run in kind_runs] for kind, kind_runs in by_kind.items()}
    print(f"(each run created once the one before finished, >= {args.interval:.1f}s apart; pools of {args.pool_size})")
    print(summary("Execution", latencies[EXECUTION]))
    print(summary("Job", latencies[JOB]))
    for language in languages:
        kind = f"{WARM} {language}"
        served = [run.latency() for run in by_kind[kind] if benchmark.sandboxes.get(run.name) == "warm"]
        print(summary(kind, latencies[kind]) + f"; {len(served)} warm, {len(latencies[kind]) - len(served)} misses")
        if served:
            print(summary("  served", served))
    p50 = statistics.median(latencies[EXECUTION]) / statistics.median(latencies[JOB])
    p95 = percentile(latencies[EXECUTION], 0.95) / percentile(latencies[JOB], 0.95)
    print(f"Execution/Job ratio: p50 {p50:.2f} p95 {p95:.2f}")
    if burst:
        twice = [names for names in benchmark.claims.values() if len(names) > 1]
        misses = sum(benchmark.sandboxes.get(name) != "warm" for name in burst)
        print(
            summary(f"burst of {len(burst)} against a pool of {args.burst_pool}", latencies[BURST])
            + f"; {misses} misses (cold), {len(twice)} pods claimed twice, all {len(burst)} printed hello"
        )
    for kind, kind_runs in by_kind.items():
        print("\n".join(breakdown(kind, kind_runs)))


if __name__ == "__main__":
    main()
