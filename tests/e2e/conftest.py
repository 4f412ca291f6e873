"""Fixtures for e2e tests: the local cluster from `make cluster`, namespaces, netns test hosts, and the
operator run as a local process watching only `e2e-op-*` namespaces (the session's, and those a test
starts with settings of its own)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
import uuid
from collections.abc import Generator, Iterator

import pytest

from tests.e2e.executions import (
    OPERATOR_NAMESPACES,
    OperatorProcess,
    OwnOperator,
    StartOperator,
    delete_executions,
    install_crds_and_runtimes,
    op_namespace_name,
    operator_log_dir,
    operators_watching,
    own_namespace_name,
)
from tests.e2e.kube import REPO, NetnsHost, kubectl, netns, wait_until


@pytest.fixture(scope="session")
def cluster() -> None:
    status = subprocess.run([str(REPO / "hack/cluster-status.sh")], capture_output=True, text=True)
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
    with netns(1 + uuid.uuid4().int % 250) as host:
        server = subprocess.Popen(
            ["ip", "netns", "exec", host.name, "python3", "-m", "http.server", "8080", "--bind", host.address],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_until(lambda: _accepts(host.address, 8080), 20, f"the test server on {host.address}:8080")
            yield NetnsHost(host.name, host.address, 8080)
        finally:
            server.kill()
            server.wait()


# Every test host's address is in here (test_host and test_network.py's hosts).
TEST_HOST_CIDR = "10.250.0.0/16"
# Settings of every operator the e2e tests run locally, besides the namespaces it watches.
LOCAL_OPERATOR_ENV = {
    # Test hosts (netns on this machine) live there; sandboxes may be allowed to reach them.
    "CODEEXEC_ALLOWED_PRIVATE_CIDRS": TEST_HOST_CIDR,
    # The dev cluster's pod range (kube-controller-manager --cluster-cidr), which no API object
    # shows; its service range the operator reads from the ServiceCIDR objects itself.
    "CODEEXEC_CLUSTER_CIDRS": "10.244.0.0/16",
}
# The operator of the running session, for the failure report hook below.
_operator: OperatorProcess | None = None
_LOG_OFFSET = pytest.StashKey[int]()
# The operators a test started for itself (own_operator), for the same hook.
_OWN_OPERATORS = pytest.StashKey[list[OperatorProcess]]()


@pytest.fixture(scope="session")
def operator(cluster: None) -> Iterator[OperatorProcess]:
    """The CRDs and Runtimes applied, and the operator running as a local process that watches only
    this session's namespaces, e2e-op-<session>-* (an operator installed in the cluster must be told
    to leave e2e-op-*)."""
    global _operator
    others = operators_watching(op_namespace_name())
    if others:
        pytest.fail(f"installed operators would also handle this session's Executions: {others}")
    install_crds_and_runtimes()
    log_path = operator_log_dir() / f"operator-e2e-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}.log"
    process = OperatorProcess(log_path, {**LOCAL_OPERATOR_ENV, "CODEEXEC_NAMESPACES": OPERATOR_NAMESPACES})
    process.start()
    _operator = process
    try:
        yield process
    finally:
        _operator = None
        process.stop()


@pytest.fixture
def op_namespace(operator: OperatorProcess) -> Iterator[str]:
    """A fresh namespace the e2e operator watches, enforcing the Pod Security Standard "restricted"
    (the API server itself then refuses any sandbox pod that does not meet it)."""
    name = op_namespace_name()
    kubectl("create", "namespace", name)
    kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted")
    yield name
    if not operator.running:
        operator.start()  # a test that stopped it failed midway; its finalizers need it
    delete_executions(name)
    kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def own_operator(operator: OperatorProcess, request: pytest.FixtureRequest) -> Iterator[StartOperator]:
    """Starts operators with settings of the test's choice, e.g. `own_operator(2, CODEEXEC_MAX_RUNNING="2")`
    (CODEEXEC_* variables), each watching only fresh namespaces of its own (restricted, like op_namespace):
    the session's operator (needed here for the CRDs and Runtimes it installs) never handles them, and
    they never handle its namespaces."""
    started: list[OwnOperator] = []
    request.node.stash[_OWN_OPERATORS] = []

    def start(namespace_count: int = 1, **env: str) -> OwnOperator:
        namespaces = [own_namespace_name() for _ in range(namespace_count)]
        others = operators_watching(namespaces[0])
        if others:
            pytest.fail(f"installed operators would also handle this test's Executions: {others}")
        for name in namespaces:
            kubectl("create", "namespace", name)
            kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted")
        log_path = operator_log_dir() / f"operator-own-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}.log"
        process = OperatorProcess(log_path, {**LOCAL_OPERATOR_ENV, "CODEEXEC_NAMESPACES": ",".join(namespaces), **env})
        own = OwnOperator(process, namespaces)
        started.append(own)  # before starting: its namespaces go even if it fails to start
        request.node.stash[_OWN_OPERATORS].append(process)
        process.start()
        return own

    yield start
    for own in started:
        if not own.process.running:
            with contextlib.suppress(AssertionError):
                own.process.start()  # a test that stopped it failed midway; its finalizers need it
        for name in own.namespaces:
            delete_executions(name)
        own.process.stop()
        for name in own.namespaces:
            kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test that used the operator shows what the operator logged meanwhile."""
    report = yield
    if call.when == "setup" and _operator is not None:
        item.stash[_LOG_OFFSET] = _operator.log_size()
    elif report.failed:
        if _operator is not None and "operator" in getattr(item, "fixturenames", ()):
            offset = item.stash.get(_LOG_OFFSET, 0)
            report.sections.append((f"operator log ({_operator.log_path})", _operator.log_since(offset)))
        for own in item.stash.get(_OWN_OPERATORS, []):
            report.sections.append((f"the test's own operator log ({own.log_path})", own.log_since(0)))
    return report


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The chaos tests run last: they kill the API server and the kubelet and fill the node, and what they leave
    recovering (a busy neighbour's pod tearing down, a restarted kubelet) must not slow the tests after them."""
    items.sort(key=lambda item: item.get_closest_marker("chaos") is not None)
