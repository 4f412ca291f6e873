"""The chart's broker: least-privilege rights, a Service the operator can read (numeric targetPort, no metrics
port), a NetworkPolicy admitting only sandboxes (and metrics scrapers named in values), a restricted pod of its own
selector, the token key Secret (its checksum on the operator's and the broker's pods), the volume variants, nothing
when disabled."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from codeexec import bindingtoken, builders
from codeexec.broker.config import BrokerConfig
from tests.unit.test_chart import find, needs_helm, render

BROKER = "code-exec-broker"


def pod_spec(objects: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = find(objects, "Deployment", BROKER)["spec"]["template"]["spec"]
    return spec


def merged_rules(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    merged: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        for resource in rule["resources"]:
            merged.setdefault((rule["apiGroups"][0], resource), set()).update(rule["verbs"])
    return merged


BROKER_RIGHTS = {
    ("codeexec.io", "executions"): {"get"},
    ("codeexec.io", "executions/status"): {"patch"},
    ("codeexec.io", "sandboxbindings"): {"get"},
    ("", "secrets"): {"get"},
    ("", "events"): {"create"},
}


@needs_helm
def test_broker_rights_are_least_privilege() -> None:
    objects = render()
    assert merged_rules(find(objects, "ClusterRole", "code-exec-code-exec-broker")["rules"]) == BROKER_RIGHTS
    binding = find(objects, "ClusterRoleBinding", "code-exec-code-exec-broker")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": BROKER, "namespace": "code-exec"}]
    watched = render("operator.watchNamespaces={team-a,team-b}")
    roles = [o for o in watched if o["kind"] == "Role" and o["metadata"]["name"] == BROKER]
    assert sorted(role["metadata"]["namespace"] for role in roles) == ["team-a", "team-b"]
    assert all(merged_rules(role["rules"]) == BROKER_RIGHTS for role in roles)
    assert not [o for o in watched if o["kind"].startswith("Cluster") and o["metadata"]["name"].endswith("-broker")]


@needs_helm
def test_broker_service_is_what_the_operator_reads() -> None:
    objects = render()
    service = find(objects, "Service", BROKER)
    assert service["spec"]["ports"] == [{"name": "http", "port": 8080, "targetPort": 8080, "protocol": "TCP"}]
    deployment = find(objects, "Deployment", BROKER)
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["selector"] == selector
    assert selector["app.kubernetes.io/component"] == "broker"
    for other in ("code-exec", "code-exec-gateway"):
        labels = find(objects, "Deployment", other)["spec"]["template"]["metadata"]["labels"]
        assert not selector.items() <= labels.items(), other


@needs_helm
def test_broker_pod_is_restricted_and_holds_the_key_and_its_own_token() -> None:
    objects = render()
    deployment = find(objects, "Deployment", BROKER)
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = pod_spec(objects)
    assert pod["automountServiceAccountToken"] is False and pod["serviceAccountName"] == BROKER
    assert find(objects, "ServiceAccount", BROKER)["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    assert container["image"] == "localhost/codeexec/operator:0.1.0"
    assert (container["command"], container["args"]) == (["codeexec"], ["broker"])
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["runAsNonRoot"] is True and security["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["requests"] == container["resources"]["limits"]
    env = {var["name"]: var["value"] for var in container["env"]}
    config = BrokerConfig.from_env(env)
    assert (config.port, config.metrics_port) == (8080, 9090)
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    assert mounts["data"] == config.data_dir
    assert f"{mounts['binding-token-key']}/key" == config.token_key_file
    assert f"{mounts['api-access']}/token" == config.api_token_file
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert volumes["binding-token-key"]["secret"]["secretName"] == "code-exec-binding-token-key"
    assert volumes["data"] == {"name": "data", "emptyDir": {}}  # the default: no claim (persistence off)


@needs_helm
def test_token_key_secret(tmp_path: Any) -> None:
    secret = find(render(), "Secret", "code-exec-binding-token-key")
    key = base64.b64decode(secret["data"]["key"])
    assert len(base64.b64decode(key)) == 48  # 48 random bytes as base64 text
    (tmp_path / "key").write_bytes(key)
    assert bindingtoken.read_key(tmp_path / "key") == key
    own = render("broker.tokenKey.existingSecret=mine")
    assert not [o for o in own if o["kind"] == "Secret" and "binding-token-key" in o["metadata"]["name"]]
    assert {v["name"]: v for v in pod_spec(own)["volumes"]}["binding-token-key"]["secret"]["secretName"] == "mine"


def key_checksums(objects: list[dict[str, Any]]) -> set[str | None]:
    """The checksum/binding-token-key annotation of the operator's and the broker's pods (None: absent)."""
    return {
        find(objects, "Deployment", name)["spec"]["template"]["metadata"]["annotations"].get(
            "checksum/binding-token-key"
        )
        for name in ("code-exec", BROKER)
    }


@needs_helm
def test_a_new_token_key_restarts_the_operator_and_the_broker_together() -> None:
    """Each reads the key once: both pods carry the key's checksum, so a key made anew (a render without the old
    Secret to look up) rolls both. The key of broker.tokenKey.existingSecret is never hashed into a pod's metadata,
    and a render without a cluster (`helm template`) gives a stable annotation."""
    first, second = render(), render()
    for objects in (first, second):
        key = find(objects, "Secret", "code-exec-binding-token-key")["data"]["key"]
        assert key_checksums(objects) == {hashlib.sha256(key.encode()).hexdigest()}
    assert key_checksums(first) != key_checksums(second)
    yours = render("broker.tokenKey.existingSecret=mine")
    assert key_checksums(yours) == key_checksums(render("broker.tokenKey.existingSecret=mine"))
    assert len(key_checksums(yours)) == 1 and None not in key_checksums(yours)
    off = find(render("broker.enabled=false"), "Deployment", "code-exec")["spec"]["template"]["metadata"]
    assert "checksum/binding-token-key" not in off["annotations"]


@needs_helm
def test_broker_volume_variants_and_disabled() -> None:
    default = render()
    assert not [o for o in default if o["kind"] == "PersistentVolumeClaim"]
    assert {v["name"]: v for v in pod_spec(default)["volumes"]}["data"] == {"name": "data", "emptyDir": {}}
    claim = find(
        render(
            "broker.persistence.enabled=true", "broker.persistence.storageClass=fast", "broker.persistence.size=5Gi"
        ),
        "PersistentVolumeClaim",
    )
    assert claim["spec"]["storageClassName"] == "fast"
    assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi"
    existing = render("broker.persistence.existingClaim=kept")
    assert not [o for o in existing if o["kind"] == "PersistentVolumeClaim"]
    assert {v["name"]: v for v in pod_spec(existing)["volumes"]}["data"]["persistentVolumeClaim"]["claimName"] == "kept"
    image = render("broker.image.repository=other/broker", "broker.image.tag=1.2")
    assert pod_spec(image)["containers"][0]["image"] == "localhost/other/broker:1.2"
    off = render("broker.enabled=false")
    assert not [o for o in off if "broker" in o["metadata"]["name"] or "binding-token" in o["metadata"]["name"]]


def broker_config(objects: list[dict[str, Any]]) -> BrokerConfig:
    (container,) = pod_spec(objects)["containers"]
    return BrokerConfig.from_env({var["name"]: var["value"] for var in container["env"]})


@needs_helm
def test_broker_admits_only_sandboxes_to_its_api_and_nobody_to_its_metrics() -> None:
    """Ingress to the broker's pods: its API port from pods carrying the labels every sandbox has (any namespace),
    and nothing else by default: no pod of the cluster tries tokens or reads /metrics."""
    objects = render()
    policy = find(objects, "NetworkPolicy", BROKER)
    deployment = find(objects, "Deployment", BROKER)
    assert policy["metadata"]["namespace"] == "code-exec"
    assert policy["spec"]["podSelector"] == {"matchLabels": deployment["spec"]["selector"]["matchLabels"]}
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    sandbox_labels = {"app.kubernetes.io/name": "code-exec-sandbox", "app.kubernetes.io/managed-by": "code-exec"}
    # The operator puts them on every sandbox, whatever its Execution.
    assert sandbox_labels.items() <= builders.labels(builders.ExecutionRef("ns", "x", "u")).items()
    api_port = broker_config(objects).port
    assert find(objects, "Service", BROKER)["spec"]["ports"][0]["targetPort"] == api_port
    assert policy["spec"]["ingress"] == [
        {
            "from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": sandbox_labels}}],
            "ports": [{"protocol": "TCP", "port": api_port}],
        }
    ]


@needs_helm
def test_broker_metrics_are_reached_only_from_the_peers_in_values() -> None:
    objects = render("broker.metrics.allowFrom[0].namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name=mon")
    ingress = find(objects, "NetworkPolicy", BROKER)["spec"]["ingress"]
    assert len(ingress) == 2
    assert ingress[1] == {
        "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "mon"}}}],
        "ports": [{"protocol": "TCP", "port": broker_config(objects).metrics_port}],
    }
    # A rule without peers would admit every source.
    assert all(rule.get("from") for rule in ingress)
