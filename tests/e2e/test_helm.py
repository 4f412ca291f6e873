"""e2e: the Helm chart on the local cluster, one release's life: install, an Execution run by the
in-cluster operator, the admission webhook, metrics, `helm test`, an upgrade, and an uninstall that
leaves nothing behind. The tests share the release and run in file order.

Needs the operator image localhost/codeexec/operator:0.1.0 in containerd (`make images`). The operator
watches only this module's own `e2e-helm-<id>-work` namespace (the local e2e operator has `e2e-op-*`),
and the webhook selects only that namespace. The cluster's RuntimeClass, CRDs and Runtimes exist
outside any release (the cluster script, the e2e fixtures), so this release creates none of them:
Helm cannot adopt objects it did not create, and must not delete them for the other tests."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.executions import execution_manifest, install_crds_and_runtimes, wait_finished
from tests.e2e.kube import REPO, helm, kubectl, kubectl_json, kubectl_run, wait_until

pytestmark = pytest.mark.e2e
CHART = REPO / "charts/code-exec"
RELEASE = "code-exec"
INSTANCE = f"app.kubernetes.io/instance={RELEASE}"
OPERATOR = f"{INSTANCE},app.kubernetes.io/component=operator"
HELLO = 'print(f"hello, {input[\'name\']}")\nreturn {"greeting": f"hello, {input[\'name\']}"}\n'


@dataclass(frozen=True)
class Release:
    namespace: str  # where the operator runs
    watched: str  # the only namespace it handles


@pytest.fixture(scope="module")
def release(cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    install_crds_and_runtimes()
    suffix = uuid.uuid4().hex[:6]
    release = Release(f"e2e-helm-{suffix}", f"e2e-helm-{suffix}-work")
    for namespace in (release.namespace, release.watched):
        kubectl("create", "namespace", namespace)
        # The operator, the test pod and the sandboxes all meet the "restricted" Pod Security Standard.
        kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    values = {
        # One operator pod, whose log and metrics these tests read (two replicas: tests/e2e/test_replicas.py).
        "operator": {"watchNamespaces": [release.watched], "replicaCount": 1},
        "runtimeClass": {"create": False},
        "runtimes": {name: {"enabled": False} for name in ("python", "javascript", "typescript")},
    }
    values_file = tmp_path_factory.mktemp("helm") / "values.json"
    values_file.write_text(json.dumps(values))
    try:
        install = helm_install(release, values_file)
        assert "helm test code-exec" in install.stdout  # NOTES.txt
        yield release
    finally:
        helm("uninstall", RELEASE, "-n", release.namespace, "--wait", check=False)
        for namespace in (release.watched, release.namespace):
            kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def helm_install(release: Release, values_file: Path) -> Any:
    result = helm(
        "install", RELEASE, str(CHART), "-n", release.namespace, "-f", str(values_file), "--wait", "--timeout", "180s",
        check=False,
    )  # fmt: skip
    if result.returncode != 0:
        pods = kubectl("get", "pods", "-n", release.namespace, "-o", "wide", check=False)
        events = kubectl("get", "events", "-n", release.namespace, check=False)
        pytest.fail(f"helm install failed: {result.stderr}\n{pods}\n{events}")
    return result


def operator_pod(release: Release) -> dict[str, Any]:
    pods = [
        pod
        for pod in kubectl_json("get", "pods", "-n", release.namespace, "-l", OPERATOR)["items"]
        if not pod["metadata"].get("deletionTimestamp")
    ]
    assert len(pods) == 1, [pod["metadata"]["name"] for pod in pods]
    pod: dict[str, Any] = pods[0]
    return pod


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {var["name"]: var.get("value", "") for var in container.get("env", [])}


def test_install_runs_a_locked_down_operator(release: Release) -> None:
    pod = operator_pod(release)
    assert pod["status"]["phase"] == "Running"
    assert {c["type"]: c["status"] for c in pod["status"]["conditions"]}["Ready"] == "True"
    spec = pod["spec"]
    assert spec["enableServiceLinks"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = spec["containers"][0]
    assert container["image"] == "localhost/codeexec/operator:0.1.0"
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    env = env_of(container)
    assert env["CODEEXEC_NAMESPACES"] == release.watched
    assert env["CODEEXEC_RUNTIME_CLASS"] == "gvisor"
    # The namespace enforces "restricted": the API server admitted the pod, so it meets the standard.
    labels = kubectl_json("get", "namespace", release.namespace)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_execution_runs_under_the_in_cluster_operator(release: Release) -> None:
    kubectl(
        "apply", "-n", release.watched, "-f", "-",
        stdin=json.dumps(execution_manifest("hello", "python", HELLO, input={"name": "helm"}, timeoutSeconds=20)),
    )  # fmt: skip
    execution = wait_finished(release.watched, "hello")
    status = execution["status"]
    assert (status["phase"], status["reason"], status["exitCode"]) == ("Succeeded", "Completed", 0), status
    assert status["result"] == {"greeting": "hello, helm"}
    assert status["stdout"] == "hello, helm\n"
    # Only this release's operator watches the namespace; its log names the Execution.
    log = kubectl("logs", "-n", release.namespace, operator_pod(release)["metadata"]["name"])
    assert f"[{release.watched}/hello]" in log

    def milestones() -> list[str] | None:
        selector = "involvedObject.kind=Execution,involvedObject.name=hello"
        events = kubectl_json("get", "events", "-n", release.watched, "--field-selector", selector)["items"]
        # eventTime (microseconds; Kopf sets it) orders them; creationTimestamp has whole seconds.
        reasons = [event["reason"] for event in sorted(events, key=lambda event: event["eventTime"])]
        return reasons if {"Accepted", "SandboxCreated", "Started", "Completed"} <= set(reasons) else None

    reasons = wait_until(milestones, 30, "the Execution's milestone Events")
    assert reasons.index("Accepted") < reasons.index("SandboxCreated")


def test_webhook_refuses_invalid_executions_at_apply(release: Release) -> None:
    unknown = execution_manifest("cobol", "cobol", "DISPLAY 'HI'.")
    refused = kubectl_run("apply", "-n", release.watched, "-f", "-", stdin=json.dumps(unknown))
    assert refused.returncode != 0
    assert 'admission webhook "executions.validate.codeexec.io" denied the request' in refused.stderr
    assert 'spec.language "cobol" is not an installed Runtime or alias' in refused.stderr
    assert "UnknownLanguage" in refused.stderr
    assert kubectl_run("get", "execution", "cobol", "-n", release.watched).returncode != 0

    # --dry-run=server is "validate": the same refusal, and nothing is created either way.
    too_long = execution_manifest("slow", "python", "pass", timeoutSeconds=3000)
    refused = kubectl_run("apply", "--dry-run=server", "-n", release.watched, "-f", "-", stdin=json.dumps(too_long))
    assert refused.returncode != 0
    assert "spec.timeoutSeconds 3000 exceeds the maximum 600 for runtime python" in refused.stderr
    valid = execution_manifest("valid", "py", "pass")
    admitted = kubectl_run("apply", "--dry-run=server", "-n", release.watched, "-f", "-", stdin=json.dumps(valid))
    assert admitted.returncode == 0, admitted.stderr
    assert "created (server dry run)" in admitted.stdout
    assert kubectl_run("get", "execution", "valid", "-n", release.watched).returncode != 0

    # The webhook judges only the watched namespace: elsewhere (other operators' namespaces) it stays out.
    elsewhere = kubectl_run("apply", "--dry-run=server", "-n", release.namespace, "-f", "-", stdin=json.dumps(unknown))
    assert elsewhere.returncode == 0, elsewhere.stderr


def metrics(release: Release) -> str:
    return kubectl("get", "--raw", f"/api/v1/namespaces/{release.namespace}/services/{RELEASE}:metrics/proxy/metrics")


def sample(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        match = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
        if match and match.group(1) == name:
            found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
            if all(found.get(key) == value for key, value in labels.items()):
                return float(match.group(3))
    return None


def test_metrics_endpoint_counts_executions(release: Release) -> None:
    text = metrics(release)
    assert sample(text, "codeexec_executions_total", language="python", phase="Succeeded") == 1
    assert sample(text, "codeexec_executions_total", language="python", phase="Pending") == 1
    assert sample(text, "codeexec_execution_duration_seconds_count", language="python", phase="Succeeded") == 1
    assert sample(text, "codeexec_executions_in_flight") == 0
    service = kubectl_json("get", "service", RELEASE, "-n", release.namespace)
    assert service["metadata"]["annotations"]["prometheus.io/scrape"] == "true"


def test_helm_test_passes(release: Release) -> None:
    result = helm("test", RELEASE, "-n", release.namespace, "--timeout", "240s", check=False)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert "Phase:          Succeeded" in result.stdout
    # The passed test pod is deleted (hook-delete-policy hook-succeeded); its Execution too.
    wait_until(
        lambda: (
            not kubectl_json("get", "pods", "-n", release.namespace, "-l", "app.kubernetes.io/component=helm-test")[
                "items"
            ]
        ),
        60,
        "the passed test pod to go",
    )
    wait_until(
        lambda: (
            not kubectl_json("get", "executions", "-n", release.watched, "-l", "app.kubernetes.io/component=helm-test")[
                "items"
            ]
        ),
        60,
        "the test's Execution to be deleted",
    )


def test_upgrade_with_changed_values_rolls_the_operator(release: Release) -> None:
    before = operator_pod(release)
    secret_before = kubectl_json("get", "secret", f"{RELEASE}-webhook-tls", "-n", release.namespace)["data"]
    helm(
        "upgrade", RELEASE, str(CHART), "-n", release.namespace, "--reuse-values",
        "--set", "operator.logLevel=debug", "--set", "config.maxOutputBytes=2048", "--wait", "--timeout", "180s",
    )  # fmt: skip
    deployment = kubectl_json("get", "deployment", RELEASE, "-n", release.namespace)
    env = env_of(deployment["spec"]["template"]["spec"]["containers"][0])
    assert (env["CODEEXEC_LOG_LEVEL"], env["CODEEXEC_MAX_OUTPUT_BYTES"]) == ("debug", "2048")

    def rolled() -> dict[str, Any] | None:
        pod = operator_pod(release)
        ready = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}.get("Ready") == "True"
        return pod if pod["metadata"]["uid"] != before["metadata"]["uid"] and ready else None

    after = wait_until(rolled, 120, "the operator pod to be replaced")
    assert env_of(after["spec"]["containers"][0])["CODEEXEC_LOG_LEVEL"] == "debug"
    wait_until(
        lambda: "DEBUG" in kubectl("logs", "-n", release.namespace, after["metadata"]["name"]),
        60,
        "debug lines in the new operator's log",
    )
    # The upgrade kept the webhook's certificate (lookup of the existing Secret), and the new pod serves it.
    assert kubectl_json("get", "secret", f"{RELEASE}-webhook-tls", "-n", release.namespace)["data"] == secret_before
    unknown = json.dumps(execution_manifest("cobol", "cobol", "x"))

    def refusal() -> str | None:
        result = kubectl_run("apply", "--dry-run=server", "-n", release.watched, "-f", "-", stdin=unknown)
        return result.stderr if "UnknownLanguage" in result.stderr else None

    refused = wait_until(refusal, 60, "the upgraded operator's webhook to refuse an unknown language")
    assert "denied the request" in refused


def test_uninstall_leaves_no_operator_objects(release: Release) -> None:
    helm("uninstall", RELEASE, "-n", release.namespace, "--wait", "--timeout", "120s")

    def leftovers() -> list[str]:
        namespaced = "deployments,replicasets,pods,serviceaccounts,services,secrets,configmaps,roles,rolebindings"
        found = []
        for namespace in (release.namespace, release.watched, "default"):
            items = kubectl_json("get", namespaced, "-n", namespace, "-l", INSTANCE)["items"]
            found += [
                f"{namespace}/{item['kind']}/{item['metadata']['name']}"
                for item in items
                # Another release in `default` would be another instance; ours is named after our namespace.
                if namespace != "default" or release.namespace in item["metadata"]["name"]
            ]
        cluster = kubectl_json(
            "get", "clusterroles,clusterrolebindings,validatingwebhookconfigurations", "-l", INSTANCE
        )["items"]  # fmt: skip
        found += [
            f"{item['kind']}/{item['metadata']['name']}"
            for item in cluster
            if release.namespace in item["metadata"]["name"]
        ]
        # Helm's own record of the release (sh.helm.release.v1.*) goes too.
        found += [
            f"secret/{item['metadata']['name']}"
            for item in kubectl_json("get", "secrets", "-n", release.namespace, "-l", "owner=helm")["items"]
        ]
        return found

    try:
        wait_until(lambda: not leftovers(), 60, "the release's objects to go", interval=1)
    except AssertionError:
        pytest.fail(f"left behind after helm uninstall: {leftovers()}")
    # By Helm's design the CRDs (from the chart's crds/) stay, and with them every Execution.
    assert kubectl_json("get", "crd", "executions.codeexec.io")["metadata"]["name"] == "executions.codeexec.io"
