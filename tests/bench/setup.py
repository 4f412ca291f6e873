"""What every benchmark needs before it measures: its namespaces, a local operator for the Executions, the probe."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from kubernetes import client

from codeexec import egress
from tests.e2e.executions import OperatorProcess, delete_executions, install_crds_and_runtimes, operator_log_dir


@dataclass(frozen=True)
class Bench:
    execution_namespace: str
    job_namespace: str
    operator: OperatorProcess | None  # None: an operator already running watches execution_namespace
    isolation_probe: str  # the runner's --isolation-probe for hand-made sandbox pods (the Jobs)


@contextmanager
def bench(core: client.CoreV1Api, namespace: str | None, run_operator: bool) -> Iterator[Bench]:
    """Fresh namespaces (the Executions' only when `namespace` is not given) and, with `run_operator`, a local
    operator (python -m codeexec run, as the e2e session runs it) watching only the Executions' namespace;
    everything made here is removed afterwards."""
    suffix = uuid.uuid4().hex[:6]
    exec_ns = namespace or f"e2e-op-bench-{suffix}"
    job_ns = f"bench-jobs-{suffix}"
    created = [ns for ns in (exec_ns, job_ns) if namespace is None or ns == job_ns]
    for ns in created:
        core.create_namespace({"metadata": {"name": ns}})
    operator = None
    try:
        if run_operator:
            install_crds_and_runtimes()
            log = operator_log_dir() / f"operator-bench-{suffix}.log"
            operator = OperatorProcess(log, {"CODEEXEC_NAMESPACES": exec_ns})
            operator.start()
            print(f"operator log: {log}")
        api_service = core.read_namespaced_service("kubernetes", "default", _preload_content=False)
        yield Bench(exec_ns, job_ns, operator, egress.isolation_probe(json.loads(api_service.data)))
    finally:
        if operator is not None:
            delete_executions(exec_ns)
            operator.stop()
        for ns in created:
            core.delete_namespace(ns)
