"""The Helm chart without a cluster: CRDs and Runtimes as generated, values ↔ schema ↔ operator
settings, comments, and the manifests `helm template` renders (security settings field by field)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from codeexec import admission, chartgen, crdgen
from codeexec.config import OperatorConfig
from codeexec.models import WarmPoolSpec

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts/code-exec"
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
GLOB_CHARS = re.compile(r"[*?!\[]")
# Kopf's peering CRD: written by hand (Kopf's resource, not generated from our models), installed by the chart.
KOPF_PEERING_CRD = "kopf-peering.yaml"
CHART_CRDS = sorted([*crdgen.rendered_files(), KOPF_PEERING_CRD])


def _helm() -> str | None:
    """helm on PATH, else the build `make helm` made (hack/cluster-env.sh puts it on PATH)."""
    exports = subprocess.run([str(REPO / "hack/cluster-env.sh")], capture_output=True, text=True).stdout
    paths = re.findall(r"^export PATH=(.*)$", exports, re.MULTILINE)
    search = paths[0].replace("$PATH", os.environ.get("PATH", "")) if paths else None
    return shutil.which("helm", path=search)


HELM = _helm()
needs_helm = pytest.mark.skipif(HELM is None, reason="helm is not built yet (make helm)")


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    assert HELM is not None
    result = subprocess.run([HELM, *args], capture_output=True, text=True)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def render(*sets: str, namespace: str = "code-exec") -> list[dict[str, Any]]:
    """The chart's objects as `helm template` renders them (release "code-exec")."""
    flags = [flag for value in sets for flag in ("--set", value)]
    args = ["template", "code-exec", str(CHART), "-n", namespace, "--kube-version", "1.34.0", *flags]
    return [doc for doc in yaml.safe_load_all(helm(*args).stdout) if doc]


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(matches) == 1, f"{kind} {name}: {len(matches)} found"
    return matches[0]


def literal_env(container: dict[str, Any]) -> dict[str, str]:
    """The container's variables with literal values (not POD_ID, which is the pod's name from the API)."""
    return {var["name"]: var["value"] for var in container["env"] if "value" in var}


def kinds(objects: list[dict[str, Any]]) -> list[tuple[str, str, str | None]]:
    return sorted((o["kind"], o["metadata"]["name"], o["metadata"].get("namespace")) for o in objects)


# --- files --------------------------------------------------------------------------------------


@pytest.mark.parametrize("file_name", CHART_CRDS)
def test_chart_crds_are_links_to_the_repository_ones(file_name: str) -> None:
    """One committed copy of each CRD: the chart's crds/ link to crds/ (helm package stores the files)."""
    link = CHART / "crds" / file_name
    assert link.is_symlink(), f"{link} must be a link to crds/{file_name}"
    assert link.resolve() == (REPO / "crds" / file_name).resolve()


def test_chart_has_only_the_generated_crds_and_kopfs_peering() -> None:
    # Not crds/examples or crds/runtimes: Helm would install every file under the chart's crds/.
    assert sorted(path.name for path in (CHART / "crds").iterdir()) == CHART_CRDS


def test_kopf_peering_crd_serves_what_the_chart_and_kopf_use() -> None:
    """The CRD of the chart's peering object; Kopf patches that object itself (no status subresource), which
    is what the RBAC rule grants."""
    crd = yaml.safe_load((REPO / "crds" / KOPF_PEERING_CRD).read_text())
    assert crd["metadata"]["name"] == "clusterkopfpeerings.kopf.dev"
    assert crd["spec"]["scope"] == "Cluster"
    assert (crd["spec"]["group"], crd["spec"]["names"]["kind"]) == ("kopf.dev", "ClusterKopfPeering")
    (version,) = crd["spec"]["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1", True, True)
    assert "subresources" not in version
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert status["x-kubernetes-preserve-unknown-fields"] is True


def test_runtime_contracts_are_read_from_the_bundled_runtime_files() -> None:
    """One copy of each Runtime's contract: crds/runtimes/, which the chart reads through a link."""
    link = CHART / "files/runtimes"
    assert link.is_symlink() and link.resolve() == (REPO / "crds/runtimes").resolve()
    template = (CHART / "templates/runtimes.yaml").read_text()
    for contract_word in ("harness", "main.py", "python3", "nodejs", "bookworm"):
        assert contract_word not in template


def _resolved(schema: dict[str, Any]) -> dict[str, Any]:
    """A schema node with its local $ref ("#/definitions/x") followed, siblings kept."""
    if "$ref" not in schema:
        return schema
    target = SCHEMA
    for part in schema["$ref"].removeprefix("#/").split("/"):
        target = target[part]
    return {**target, **{key: value for key, value in schema.items() if key != "$ref"}}


def schema_nodes(schema: dict[str, Any], values: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any], Any]]:
    schema = _resolved(schema)
    yield path, schema, values
    if schema.get("type") == "object" and "properties" in schema:
        for key, child in schema["properties"].items():
            if key in values:
                yield from schema_nodes(child, values[key], f"{path}.{key}")


def test_schema_and_values_have_the_same_keys() -> None:
    """Every value is in the schema and every schema property has a default in values.yaml (but
    Helm's `global`); objects are closed (additionalProperties false) unless they are free maps."""
    free_maps = {".operator.affinity", ".operator.podAnnotations", ".operator.podLabels", ".operator.nodeSelector"}
    free_maps |= {".serviceAccount.annotations"}
    for path, node, value in schema_nodes(SCHEMA, VALUES):
        assert node.get("description") or not path, f"{path} has no description in the schema"
        if node.get("type") != "object" or path in free_maps:
            continue
        if "properties" in node:
            assert node.get("additionalProperties") is False, f"{path} accepts unknown keys"
            expected = set(node["properties"]) - ({"global"} if not path else set())
            if path in {".operator.resources", ".webhook.namespaceSelector", ".broker.image"}:
                assert set(value) <= expected, path
            else:
                assert set(value) == expected, f"{path}: values.yaml {sorted(value)} vs schema {sorted(expected)}"


def test_every_value_has_a_comment() -> None:
    """Each key line in values.yaml has a comment right above it (or is inside a commented block)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    missing = []
    for number, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z][A-Za-z0-9]*):", line)
        if not match:
            continue
        previous = lines[number - 1].strip() if number else ""
        # Per-key comments, except the keys of a small literal map that its parent's comment explains.
        parent_comment_covers = match.group(1) and re.match(r"^\s*(requests|limits|cpu|memory):", line)
        if not previous.startswith("#") and not parent_comment_covers:
            missing.append(f"{number + 1}: {line.strip()}")
    assert missing == []


def test_config_values_are_the_operator_settings_with_its_defaults() -> None:
    """config.<camelCase> ↔ OperatorConfig.<snake_case>, same defaults: the chart can set every
    setting, nothing more, and installs the operator's own defaults."""
    config = VALUES["config"]
    fields = chartgen.chart_settings()
    as_snake = {re.sub(r"([A-Z])", r"_\1", key).lower(): key for key in config}
    assert set(as_snake) == set(fields)
    defaults = OperatorConfig()
    for snake, key in as_snake.items():
        default = getattr(defaults, snake)
        assert config[key] == (list(default) if isinstance(default, tuple) else default), key


def test_helm_test_script_knows_the_schema_languages() -> None:
    script = (CHART / "files/helm_test.py").read_text()
    for language in SCHEMA["properties"]["helmTest"]["properties"]["language"]["enum"]:
        assert f'"{language}": (' in script


# --- rendering ----------------------------------------------------------------------------------


@needs_helm
def test_lint_strict_passes() -> None:
    result = helm("lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in result.stdout


@needs_helm
def test_package_holds_the_crd_files_and_no_examples(tmp_path: Path) -> None:
    helm("package", str(CHART), "--destination", str(tmp_path))
    (archive,) = tmp_path.glob("code-exec-*.tgz")
    with tarfile.open(archive) as tar:
        crds = {member.name: member for member in tar.getmembers() if "/crds/" in member.name}
        assert sorted(crds) == [f"code-exec/crds/{name}" for name in CHART_CRDS]
        for name, member in crds.items():
            assert member.isfile(), f"{name} is packaged as a link"
            content = tar.extractfile(member).read().decode()  # type: ignore[union-attr]
            assert content == (REPO / "crds" / name.rsplit("/", 1)[1]).read_text()
        assert not [name for name in tar.getnames() if "example" in name]
    for chart in (str(CHART), str(archive)):  # the directory (links followed) and the package
        rendered = yaml.safe_load_all(helm("template", "x", chart, "--kube-version", "1.34.0", "--include-crds").stdout)
        names = sorted(doc["metadata"]["name"] for doc in rendered if doc and doc["kind"] == "CustomResourceDefinition")
        assert names == [
            "clusterkopfpeerings.kopf.dev",
            "executions.codeexec.io",
            "runtimes.codeexec.io",
            "sandboxbindings.codeexec.io",
            "warmpools.codeexec.io",
        ], chart


@needs_helm
@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("operator.bogus=1", "additional properties 'bogus' not allowed"),
        ("webhook.failurePolicy=Maybe", "/webhook/failurePolicy"),
        ("config.maxCpu=lots", "/config/maxCpu"),
        ("operator.logLevel=trace", "/operator/logLevel"),
        ("operator.replicaCount=0", "/operator/replicaCount"),
        ("config.peeringLifetimeSeconds=2", "/config/peeringLifetimeSeconds"),
        ("runtimes.python.maxTimeoutSeconds=0", "/runtimes/python/maxTimeoutSeconds"),
        ("warmPools[0].name=p,warmPools[0].runtime=python,warmPools[0].replicas=-1", "/warmPools/0/replicas"),
        ("warmPools[0].name=p,warmPools[0].replicas=1", "missing property 'runtime'"),
        ("warmPools[0].name=p,warmPools[0].runtime=py,warmPools[0].replicas=1,warmPools[0].size=2", "'size'"),
    ],
)
def test_schema_refuses_bad_values(value: str, complaint: str) -> None:
    args = ["template", "x", str(CHART), "--kube-version", "1.34.0", "--set", value]
    result = helm(*args, check=False)
    assert result.returncode != 0
    assert complaint in result.stderr


@needs_helm
def test_warm_pools_from_values() -> None:
    """Fails when a pool's values do not reach its spec (the spec fields are the CRD's, generated into the
    schema), or the namespace does not default to the release's."""
    objects = render(
        "warmPools[0].name=python,warmPools[0].runtime=python,warmPools[0].replicas=2",
        "warmPools[1].name=ts,warmPools[1].namespace=team-a,warmPools[1].runtime=ts,warmPools[1].replicas=1",
        "warmPools[1].resources.cpu=500m,warmPools[1].resources.memory=512Mi",
    )
    pools = {o["metadata"]["name"]: o for o in objects if o["kind"] == "WarmPool"}
    assert sorted(pools) == ["python", "ts"]
    assert pools["python"]["apiVersion"] == "codeexec.io/v1alpha1"
    assert pools["python"]["metadata"]["namespace"] == "code-exec"
    assert pools["python"]["spec"] == {"runtime": "python", "replicas": 2}
    assert pools["ts"]["metadata"]["namespace"] == "team-a"
    assert pools["ts"]["spec"] == {"runtime": "ts", "replicas": 1, "resources": {"cpu": "500m", "memory": "512Mi"}}
    for pool in pools.values():
        WarmPoolSpec.model_validate(pool["spec"])
    assert not [o for o in render() if o["kind"] == "WarmPool"]


@needs_helm
def test_default_install_objects() -> None:
    objects = render()
    assert kinds(objects) == [
        ("ClusterKopfPeering", "code-exec-code-exec", None),
        ("ClusterRole", "code-exec-code-exec", None),
        ("ClusterRole", "code-exec-code-exec-binding-admin", None),
        ("ClusterRole", "code-exec-code-exec-broker", None),
        ("ClusterRole", "code-exec-code-exec-cluster", None),
        ("ClusterRole", "code-exec-code-exec-gateway-readiness", None),
        ("ClusterRole", "code-exec-code-exec-pool-admin", None),
        ("ClusterRole", "code-exec-code-exec-runtime-reader", None),
        ("ClusterRole", "code-exec-code-exec-user", None),
        ("ClusterRole", "code-exec-code-exec-viewer", None),
        ("ClusterRoleBinding", "code-exec-code-exec", None),
        ("ClusterRoleBinding", "code-exec-code-exec-broker", None),
        ("ClusterRoleBinding", "code-exec-code-exec-cluster", None),
        ("ClusterRoleBinding", "code-exec-code-exec-gateway-readiness", None),
        ("ClusterRoleBinding", "code-exec-code-exec-runtime-reader", None),
        ("Deployment", "code-exec", "code-exec"),
        ("Deployment", "code-exec-broker", "code-exec"),
        ("Deployment", "code-exec-gateway", "code-exec"),
        ("NetworkPolicy", "code-exec-broker", "code-exec"),
        ("Pod", "code-exec-test", "code-exec"),  # the `helm test` hook
        ("PodDisruptionBudget", "code-exec", "code-exec"),
        ("Role", "code-exec-broker-service", "code-exec"),
        ("Role", "code-exec-code-exec-apiserver", "default"),
        ("Role", "code-exec-gateway-readiness", "code-exec"),
        ("Role", "code-exec-test", "code-exec"),
        ("RoleBinding", "code-exec-broker-service", "code-exec"),
        ("RoleBinding", "code-exec-code-exec-apiserver", "default"),
        ("RoleBinding", "code-exec-gateway-readiness", "code-exec"),
        ("RoleBinding", "code-exec-test", "code-exec"),
        ("Runtime", "javascript", None),
        ("Runtime", "python", None),
        ("Runtime", "typescript", None),
        ("RuntimeClass", "gvisor", None),
        ("Secret", "code-exec-binding-token-key", "code-exec"),
        ("Secret", "code-exec-webhook-tls", "code-exec"),
        ("Service", "code-exec", "code-exec"),
        ("Service", "code-exec-broker", "code-exec"),
        ("Service", "code-exec-gateway", "code-exec"),
        ("ServiceAccount", "code-exec", "code-exec"),
        ("ServiceAccount", "code-exec-broker", "code-exec"),
        ("ServiceAccount", "code-exec-gateway", "code-exec"),
        ("ServiceAccount", "code-exec-test", "code-exec"),
        ("ValidatingWebhookConfiguration", "code-exec-code-exec", None),
    ]
    for obj in objects:
        assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == "code-exec", obj["kind"]


@needs_helm
def test_operator_deployment_security() -> None:
    deployment = find(render(), "Deployment", "code-exec")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    pod = deployment["spec"]["template"]["spec"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "code-exec"
    assert pod["serviceAccountName"] == "code-exec"
    assert pod["automountServiceAccountToken"] is True
    assert pod["enableServiceLinks"] is False
    assert "hostNetwork" not in pod and "hostPID" not in pod and "hostIPC" not in pod
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["runAsGroup"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    assert container["image"] == "localhost/codeexec/operator:0.1.0"
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert container["args"] == ["run", "--liveness", "http://0.0.0.0:8080/healthz"]
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == 65532
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["privileged"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["resources"] == {
        "requests": {"cpu": "50m", "memory": "128Mi"},
        "limits": {"cpu": "1", "memory": "512Mi"},
    }
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["startupProbe"]["tcpSocket"] == {"port": "webhook"}
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"health": 8080, "webhook": 9443, "metrics": 9090}
    mounts = {mount["name"]: mount for mount in container["volumeMounts"]}
    assert mounts["webhook-tls"] == {"name": "webhook-tls", "mountPath": "/etc/codeexec/webhook", "readOnly": True}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert volumes["tmp"]["emptyDir"] == {"sizeLimit": "16Mi"}
    assert volumes["webhook-tls"]["secret"]["defaultMode"] == 0o440
    assert mounts["webhook-tls"]["mountPath"] == OperatorConfig().webhook_cert_dir


@needs_helm
def test_operator_environment_is_every_setting() -> None:
    (container,) = find(render(), "Deployment", "code-exec")["spec"]["template"]["spec"]["containers"]
    env = literal_env(container)
    assert set(env) == {f"CODEEXEC_{name.upper()}" for name in OperatorConfig.model_fields}
    config = OperatorConfig.from_env(env)  # what the operator would make of it
    assert config.namespaces == ()
    assert config.runtime_class == "gvisor"
    assert (config.webhook_port, config.metrics_port) == (9443, 9090)
    expected = OperatorConfig(
        runtime_class="gvisor",
        webhook_port=9443,
        metrics_port=9090,
        peering="code-exec-code-exec",
        broker_service="code-exec/code-exec-broker",
    )
    assert config == expected


@needs_helm
def test_operator_reads_the_binding_token_key_from_its_mount() -> None:
    """The key the operator mints binding tokens with: the broker's Secret (or the one named), read-only, at the
    file its setting names; optional, so a missing Secret refuses bindings only, not every Execution."""
    pod = find(render(), "Deployment", "code-exec")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "binding-token-key"]
    assert mount == {"name": "binding-token-key", "mountPath": "/var/run/codeexec/binding-token-key", "readOnly": True}
    (volume,) = [v for v in pod["volumes"] if v["name"] == "binding-token-key"]
    assert volume["secret"] == {
        "secretName": "code-exec-binding-token-key",
        "optional": True,
        "defaultMode": 0o440,
        "items": [{"key": "key", "path": "key"}],
    }
    key_file = OperatorConfig.from_env(literal_env(container)).binding_token_key_file
    assert key_file == f"{mount['mountPath']}/{volume['secret']['items'][0]['path']}"


@needs_helm
def test_without_the_broker_the_operator_has_no_broker_and_no_key() -> None:
    """broker.enabled=false: bindings are unavailable (an empty CODEEXEC_BROKER_SERVICE), nothing mounts a Secret
    that no longer exists, and the operator may read no broker Service."""
    objects = render("broker.enabled=false")
    pod = find(objects, "Deployment", "code-exec")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert OperatorConfig.from_env(literal_env(container)).broker_service == ""
    assert "binding-token-key" not in {v["name"] for v in pod["volumes"]}
    assert "binding-token-key" not in {m["name"] for m in container["volumeMounts"]}
    assert not [o for o in objects if o["metadata"]["name"] == "code-exec-broker-service"]


@needs_helm
def test_the_operator_mounts_an_existing_token_key_secret() -> None:
    pod = find(render("broker.tokenKey.existingSecret=my-key"), "Deployment", "code-exec")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "binding-token-key"]
    assert volume["secret"]["secretName"] == "my-key"


@needs_helm
def test_replicas_share_the_release_peering_object() -> None:
    """Two replicas by default, one active by Kopf peering: each pod names itself (POD_ID, Kopf's identity) in
    the release's ClusterKopfPeering, which the operator is told, may patch, and which the chart creates."""
    objects = render(namespace="ops")
    deployment = find(objects, "Deployment", "code-exec")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {var["name"]: var for var in container["env"]}
    assert env["POD_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    name = env["CODEEXEC_PEERING"]["value"]
    assert name == "code-exec-ops"  # cluster-scoped: the namespace keeps two releases apart
    peering = find(objects, "ClusterKopfPeering")
    assert (peering["apiVersion"], peering["metadata"]["name"]) == ("kopf.dev/v1", name)
    rules = find(objects, "ClusterRole", "code-exec-ops-cluster")["rules"]
    peering_rules = [rule for rule in rules if rule["apiGroups"] == ["kopf.dev"]]
    assert peering_rules == [
        {"apiGroups": ["kopf.dev"], "resources": ["clusterkopfpeerings"], "verbs": ["list", "watch"]},
        {"apiGroups": ["kopf.dev"], "resources": ["clusterkopfpeerings"], "resourceNames": [name], "verbs": ["patch"]},
    ]
    # A stopping pod exits gracefully (and leaves the peering) within this; the default lifetime is shorter.
    assert pod["terminationGracePeriodSeconds"] == 30
    assert OperatorConfig().peering_lifetime_seconds < pod["terminationGracePeriodSeconds"]
    (spread,) = pod["topologySpreadConstraints"]
    assert spread["whenUnsatisfiable"] == "ScheduleAnyway"
    assert (
        spread["labelSelector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )


@needs_helm
def test_disruption_budget_keeps_one_replica() -> None:
    objects = render()
    budget = find(objects, "PodDisruptionBudget")
    assert budget["spec"]["minAvailable"] == 1
    selector = budget["spec"]["selector"]["matchLabels"]
    assert selector == find(objects, "Deployment", "code-exec")["spec"]["selector"]["matchLabels"]
    # One replica: a budget of 1 would block every node drain, so there is none (and nothing to spread).
    single = render("operator.replicaCount=1")
    assert find(single, "Deployment", "code-exec")["spec"]["replicas"] == 1
    assert "topologySpreadConstraints" not in find(single, "Deployment", "code-exec")["spec"]["template"]["spec"]
    assert not [obj for obj in single if obj["kind"] == "PodDisruptionBudget"]
    assert find(render("operator.replicaCount=3"), "Deployment", "code-exec")["spec"]["replicas"] == 3


@needs_helm
def test_values_reach_the_operator() -> None:
    sets = [
        "config.startDeadlineSeconds=1000000",
        "config.keepPods=true",
        "config.allowedPrivateCidrs={10.1.0.0/16,10.2.0.0/16}",
    ]
    sets += ["operator.logLevel=debug", "webhook.enabled=false", "metrics.enabled=false", "runtimeClass.create=false"]
    sets += ["runtimeClass.name="]
    objects = render(*sets)
    (container,) = find(objects, "Deployment", "code-exec")["spec"]["template"]["spec"]["containers"]
    env = literal_env(container)
    assert env["CODEEXEC_START_DEADLINE_SECONDS"] == "1000000"  # not 1e+06
    assert env["CODEEXEC_KEEP_PODS"] == "true"
    assert env["CODEEXEC_ALLOWED_PRIVATE_CIDRS"] == "10.1.0.0/16,10.2.0.0/16"
    assert env["CODEEXEC_LOG_LEVEL"] == "debug"
    assert (env["CODEEXEC_WEBHOOK_PORT"], env["CODEEXEC_METRICS_PORT"], env["CODEEXEC_RUNTIME_CLASS"]) == ("0", "0", "")
    assert "startupProbe" in container and "tcpSocket" not in container["startupProbe"]
    others = ("-gateway", "-broker", "-binding-token-key")  # not the operator's
    present = {obj["kind"] for obj in objects if not obj["metadata"]["name"].endswith(others)}
    assert not present & {"ValidatingWebhookConfiguration", "Secret", "Service", "RuntimeClass"}


@needs_helm
def test_runtimes_render_as_the_bundled_runtime_files() -> None:
    rendered = {obj["metadata"]["name"]: obj for obj in render() if obj["kind"] == "Runtime"}
    for path in sorted((REPO / "crds/runtimes").glob("*.yaml")):
        bundled = yaml.safe_load(path.read_text())
        assert rendered[bundled["metadata"]["name"]]["spec"] == bundled["spec"], path.name


@needs_helm
def test_runtime_values() -> None:
    objects = render(
        "runtimes.python.image.registry=ghcr.io/example",
        "runtimes.python.image.tag=1.2.3",
        "runtimes.python.imagePullPolicy=Always",
        "runtimes.typescript.enabled=false",
    )
    runtimes = {obj["metadata"]["name"]: obj["spec"] for obj in objects if obj["kind"] == "Runtime"}
    assert sorted(runtimes) == ["javascript", "python"]
    assert runtimes["python"]["image"] == "ghcr.io/example/codeexec/python:1.2.3"
    assert runtimes["python"]["imagePullPolicy"] == "Always"
    assert "imagePullPolicy" not in runtimes["javascript"]


@needs_helm
def test_webhook_configuration() -> None:
    objects = render()
    webhook_config = find(objects, "ValidatingWebhookConfiguration")
    (webhook,) = webhook_config["webhooks"]
    service = webhook["clientConfig"]["service"]
    # A path that names no Kopf handler would admit everything: it must be the handler's id.
    assert service == {
        "name": "code-exec",
        "namespace": "code-exec",
        "path": f"/{admission.WEBHOOK_ID}",
        "port": 443,
    }
    assert webhook["rules"] == [
        {
            "apiGroups": ["codeexec.io"],
            "apiVersions": ["v1alpha1"],
            "resources": ["executions"],
            "operations": ["CREATE"],
            "scope": "Namespaced",
        }
    ]
    assert webhook["failurePolicy"] == "Fail"
    assert webhook["sideEffects"] == "None"
    assert webhook["timeoutSeconds"] == 10
    assert webhook["namespaceSelector"] == {}
    svc = find(objects, "Service", "code-exec")
    assert {p["name"]: (p["port"], p["targetPort"]) for p in svc["spec"]["ports"]} == {
        "webhook": (443, "webhook"),
        "metrics": (9090, "metrics"),
    }
    assert svc["metadata"]["annotations"]["prometheus.io/port"] == "9090"
    assert (
        find(render("webhook.failurePolicy=Ignore"), "ValidatingWebhookConfiguration")["webhooks"][0]["failurePolicy"]
        == "Ignore"
    )


@needs_helm
def test_webhook_certificate_serves_the_service_name(tmp_path: Path) -> None:
    objects = render(namespace="ops")
    secret = find(objects, "Secret", "code-exec-webhook-tls")
    (webhook,) = find(objects, "ValidatingWebhookConfiguration")["webhooks"]
    data = {key: base64.b64decode(value) for key, value in secret["data"].items()}
    assert secret["type"] == "kubernetes.io/tls"
    assert webhook["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
    # The same render's checksum: a regenerated certificate rolls the operator pod.
    annotations = find(objects, "Deployment", "code-exec")["spec"]["template"]["metadata"]["annotations"]
    assert len(annotations["checksum/webhook-tls"]) == 64
    for name, content in data.items():
        (tmp_path / name).write_bytes(content)
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    verify = subprocess.run(
        [openssl, "verify", "-CAfile", str(tmp_path / "ca.crt"), str(tmp_path / "tls.crt")],
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0, verify.stderr
    text = subprocess.run(
        [openssl, "x509", "-noout", "-text", "-in", str(tmp_path / "tls.crt")], capture_output=True, text=True
    ).stdout
    assert "DNS:code-exec.ops.svc" in text  # the name the API server connects to
    assert "BEGIN" in data["tls.key"].decode()


@needs_helm
def test_watching_named_namespaces_grants_roles_only_there() -> None:
    objects = render("operator.watchNamespaces={team-a,team-b}")
    roles = {(o["metadata"]["namespace"], o["metadata"]["name"]) for o in objects if o["kind"] == "Role"}
    assert {("team-a", "code-exec"), ("team-b", "code-exec")} <= roles
    assert not [o for o in objects if o["kind"] == "ClusterRole" and o["metadata"]["name"] == "code-exec-code-exec"]
    cluster_rules = find(objects, "ClusterRole", "code-exec-code-exec-cluster")["rules"]
    cluster_resources = {resource for rule in cluster_rules for resource in rule["resources"]}
    assert cluster_resources == {
        "runtimes",
        "runtimeclasses",
        "nodes",
        "servicecidrs",
        "customresourcedefinitions",
        "namespaces",
        "clusterkopfpeerings",
        "pods",  # listed for the queue's capacity, never written
    }
    for rule in cluster_rules:
        if set(rule["verbs"]) <= {"get", "list", "watch"}:
            continue
        # Nothing cluster-wide is written but the release's own peering object.
        assert rule == {
            "apiGroups": ["kopf.dev"],
            "resources": ["clusterkopfpeerings"],
            "resourceNames": ["code-exec-code-exec"],
            "verbs": ["patch"],
        }
    (webhook,) = find(objects, "ValidatingWebhookConfiguration")["webhooks"]
    assert webhook["namespaceSelector"] == {
        "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a", "team-b"]}]
    }
    env = literal_env(find(objects, "Deployment", "code-exec")["spec"]["template"]["spec"]["containers"][0])
    assert env["CODEEXEC_NAMESPACES"] == "team-a,team-b"
    test_role = find(objects, "Role", "code-exec-test")
    assert test_role["metadata"]["namespace"] == "team-a"
    assert test_role["rules"] == [
        {"apiGroups": ["codeexec.io"], "resources": ["executions"], "verbs": ["create", "get", "delete"]}
    ]


@needs_helm
def test_namespace_patterns_need_an_explicit_webhook_selector() -> None:
    args = ["template", "x", str(CHART), "--kube-version", "1.34.0", "--set", "operator.watchNamespaces={team-*}"]
    args += ["--set", "helmTest.enabled=false"]
    refused = helm(*args, check=False)
    assert refused.returncode != 0
    assert "webhook.namespaceSelector must be set" in refused.stderr
    objects = render(
        "operator.watchNamespaces={team-*}",
        "webhook.namespaceSelector.matchLabels.codeexec=enabled",
        "helmTest.namespace=team-a",
    )
    assert find(objects, "ClusterRole", "code-exec-code-exec")  # patterns: cluster-wide namespaced rules
    (webhook,) = find(objects, "ValidatingWebhookConfiguration")["webhooks"]
    assert webhook["namespaceSelector"] == {"matchLabels": {"codeexec": "enabled"}}


@needs_helm
def test_operator_rules_are_least_privilege() -> None:
    objects = render()
    rules = find(objects, "ClusterRole", "code-exec-code-exec")["rules"]
    merged: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        for resource in rule["resources"]:
            merged.setdefault((rule["apiGroups"][0], resource), set()).update(rule["verbs"])
    assert merged == {
        ("codeexec.io", "executions"): {"get", "list", "watch", "delete", "patch"},
        ("codeexec.io", "executions/status"): {"patch"},
        ("codeexec.io", "executions/finalizers"): {"update"},
        ("codeexec.io", "warmpools"): {"get", "list", "watch", "patch"},
        ("codeexec.io", "warmpools/status"): {"patch"},
        ("codeexec.io", "warmpools/finalizers"): {"update"},
        ("codeexec.io", "sandboxbindings"): {"get", "list", "watch"},
        ("codeexec.io", "sandboxbindings/status"): {"patch"},
        ("", "secrets"): {"get", "create", "delete"},  # a binding's key; bindings.json of an Execution
        ("", "pods"): {"create", "get", "list", "watch", "delete", "patch"},
        ("", "pods/attach"): {"create", "get"},
        ("", "pods/log"): {"get"},
        ("", "configmaps"): {"create", "get", "delete"},
        ("networking.k8s.io", "networkpolicies"): {"create", "get", "delete"},
        ("", "events"): {"create"},
    }
    apiserver = find(objects, "Role", "code-exec-code-exec-apiserver")
    assert apiserver["rules"][0]["resourceNames"] == ["kubernetes"]
    # The broker's Service, in the release's namespace, by name: what CODEEXEC_BROKER_SERVICE names.
    broker = find(objects, "Role", "code-exec-broker-service")
    assert broker["rules"] == [
        {"apiGroups": [""], "resources": ["services"], "resourceNames": ["code-exec-broker"], "verbs": ["get"]}
    ]
    (container,) = find(objects, "Deployment", "code-exec")["spec"]["template"]["spec"]["containers"]
    assert literal_env(container)["CODEEXEC_BROKER_SERVICE"] == f"{broker['metadata']['namespace']}/code-exec-broker"
    binding = find(objects, "RoleBinding", "code-exec-broker-service")
    assert binding["roleRef"]["name"] == "code-exec-broker-service"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "code-exec", "namespace": "code-exec"}]
    for obj in objects:
        for rule in obj.get("rules", []):
            assert "*" not in rule["verbs"] and "*" not in rule["resources"], obj["metadata"]["name"]


def test_every_rbac_rule_has_a_comment() -> None:
    for template in ("rbac.yaml", "user-roles.yaml", "tests/test-execution.yaml", "gateway.yaml", "broker.yaml"):
        lines = (CHART / "templates" / template).read_text().splitlines()
        for number, line in enumerate(lines):
            if line.strip().startswith("- apiGroups:"):
                previous = lines[number - 1].strip()
                parent = lines[number - 1].strip() == "rules:" and lines[number - 2].strip().startswith("#")
                assert previous.startswith("#") or parent, f"{template}:{number + 1} has no comment"


@needs_helm
def test_helm_test_pod() -> None:
    args = ["template", "code-exec", str(CHART), "-n", "code-exec", "--kube-version", "1.34.0", "--show-only"]
    pod = yaml.safe_load(helm(*args, "templates/tests/test-execution.yaml").stdout.split("---")[-1])
    assert pod["kind"] == "Pod"
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["serviceAccountName"] == "code-exec-test"
    (container,) = pod["spec"]["containers"]
    assert container["command"][:2] == ["python", "-c"]
    assert container["command"][2] == (CHART / "files/helm_test.py").read_text()
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    env = {var["name"]: var["value"] for var in container["env"]}
    assert env == {
        "RELEASE": "code-exec",
        "TEST_NAMESPACE": "code-exec",
        "TEST_LANGUAGE": "python",
        "TEST_TIMEOUT_SECONDS": "180",
    }


@needs_helm
def test_gateway_reads_only_for_readiness() -> None:
    """The gateway acts as its callers: its own ServiceAccount may only `get` the three CRDs and the operator
    Deployment (for /health/ready), by name, and nothing over Executions. Its token is a projected volume read
    by readiness alone; the account's default token is not mounted (seen failing when the pod mounted it)."""
    objects = render()
    deployment = find(objects, "Deployment", "code-exec-gateway")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "code-exec-gateway"
    assert pod["automountServiceAccountToken"] is False
    assert find(objects, "ServiceAccount", "code-exec-gateway")["automountServiceAccountToken"] is False
    gateway = {"kind": "ServiceAccount", "name": "code-exec-gateway", "namespace": "code-exec"}
    bound = [o for o in objects if o["kind"] in ("RoleBinding", "ClusterRoleBinding") and gateway in o["subjects"]]
    assert sorted((b["kind"], b["roleRef"]["kind"], b["roleRef"]["name"]) for b in bound) == [
        ("ClusterRoleBinding", "ClusterRole", "code-exec-code-exec-gateway-readiness"),
        ("RoleBinding", "Role", "code-exec-gateway-readiness"),
    ]
    assert find(objects, "RoleBinding", "code-exec-gateway-readiness")["metadata"]["namespace"] == "code-exec"
    assert find(objects, "ClusterRole", "code-exec-code-exec-gateway-readiness")["rules"] == [
        {
            "apiGroups": ["apiextensions.k8s.io"],
            "resources": ["customresourcedefinitions"],
            "resourceNames": ["executions.codeexec.io", "runtimes.codeexec.io", "warmpools.codeexec.io"],
            "verbs": ["get"],
        }
    ]
    role = find(objects, "Role", "code-exec-gateway-readiness")
    assert role["metadata"]["namespace"] == "code-exec"
    # The operator Deployment's own name: nothing else in the namespace.
    assert find(objects, "Deployment", "code-exec")["metadata"]["name"] == "code-exec"
    assert role["rules"] == [
        {"apiGroups": ["apps"], "resources": ["deployments"], "resourceNames": ["code-exec"], "verbs": ["get"]}
    ]
    # The token: a projected serviceAccountToken on the gateway pod only, mounted read-only where the flag says.
    projected = [
        (o["metadata"]["name"], volume["name"])
        for o in objects
        if o["kind"] in ("Deployment", "Pod")
        for volume in (o["spec"]["template"]["spec"] if o["kind"] == "Deployment" else o["spec"]).get("volumes", [])
        if any("serviceAccountToken" in source for source in volume.get("projected", {}).get("sources", []))
    ]
    assert sorted(projected) == [("code-exec-broker", "api-access"), ("code-exec-gateway", "readiness-token")]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "readiness-token"]
    assert volume["projected"]["sources"] == [{"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}}]
    (gateway_container,) = pod["containers"]
    (mount,) = [m for m in gateway_container["volumeMounts"] if m["name"] == "readiness-token"]
    assert mount == {"name": "readiness-token", "mountPath": "/var/run/secrets/codeexec/readiness", "readOnly": True}
    assert "--readiness-token-file=/var/run/secrets/codeexec/readiness/token" in gateway_container["args"]
    assert "--operator-deployment=code-exec" in gateway_container["args"]
    assert "--operator-namespace=code-exec" in gateway_container["args"]
    (container,) = pod["containers"]
    assert container["command"] == ["codeexec"]
    assert container["args"][0] == "gateway"
    assert "--max-body-bytes=1048576" in container["args"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    service = find(objects, "Service", "code-exec-gateway")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    off = render("gateway.enabled=false", "userRoles.create=false")
    assert not [o for o in off if "gateway" in o["metadata"]["name"] or o["metadata"]["name"].endswith("-user")]


@needs_helm
def test_user_roles_aggregate_into_edit_and_view() -> None:
    objects = render()
    user = find(objects, "ClusterRole", "code-exec-code-exec-user")
    assert user["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert {tuple(rule["resources"]): set(rule["verbs"]) for rule in user["rules"]} == {
        ("executions",): {"create", "get", "list", "watch", "delete"},
        ("runtimes",): {"get", "list", "watch"},
        ("sandboxbindings",): {"get", "list", "watch"},  # to name them; granting one is not running code
    }
    assert "warmpools" not in {resource for rule in user["rules"] for resource in rule["resources"]}
    grants = find(objects, "ClusterRole", "code-exec-code-exec-binding-admin")
    assert grants["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    assert "rbac.authorization.k8s.io/aggregate-to-edit" not in grants["metadata"]["labels"]
    assert grants["rules"] == [
        {
            "apiGroups": ["codeexec.io"],
            "resources": ["sandboxbindings"],
            "verbs": ["create", "get", "list", "watch", "update", "patch", "delete"],
        }
    ]
    pools = find(objects, "ClusterRole", "code-exec-code-exec-pool-admin")
    assert pools["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    assert "rbac.authorization.k8s.io/aggregate-to-edit" not in pools["metadata"]["labels"]
    assert pools["rules"] == [
        {
            "apiGroups": ["codeexec.io"],
            "resources": ["warmpools"],
            "verbs": ["create", "get", "list", "watch", "update", "patch", "delete"],
        }
    ]
    viewer = find(objects, "ClusterRole", "code-exec-code-exec-viewer")
    assert viewer["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert {verb for rule in viewer["rules"] for verb in rule["verbs"]} == {"get", "list", "watch"}
    assert {resource for rule in viewer["rules"] for resource in rule["resources"]} == {
        "executions",
        "runtimes",
        "warmpools",
        "sandboxbindings",
    }
    # Runtimes are cluster-scoped: every authenticated user reads them through a ClusterRoleBinding.
    binding = find(objects, "ClusterRoleBinding", "code-exec-code-exec-runtime-reader")
    assert binding["subjects"] == [
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:authenticated"}
    ]
    reader = find(objects, "ClusterRole", binding["roleRef"]["name"])
    assert reader["rules"] == [
        {"apiGroups": ["codeexec.io"], "resources": ["runtimes"], "verbs": ["get", "list", "watch"]}
    ]
