"""The generated CRDs (their drift: test_generated.py): structural schemas, names, columns and examples."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from codeexec import crdgen
from codeexec.__main__ import main
from codeexec.models import ExecutionSpec, RuntimeSpec
from tests.unit.factories import POD_LEVEL_FIELDS

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "crds"
FORBIDDEN_SPEC_FIELDS = [*POD_LEVEL_FIELDS, "volumes"]


def schema_of(crd: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node with its path, e.g. .spec.env[].name."""
    yield path, schema
    for name, child in schema.get("properties", {}).items():
        yield from nodes(child, f"{path}.{name}")
    if "items" in schema:
        yield from nodes(schema["items"], f"{path}[]")


def test_command_line_writes_the_crds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["crds", "--out", str(tmp_path)])
    assert capsys.readouterr().out.split() == [
        str(tmp_path / "execution.yaml"),
        str(tmp_path / "runtime.yaml"),
        str(tmp_path / "warmpool.yaml"),
    ]
    assert (tmp_path / "execution.yaml").read_text() == (CRD_DIR / "execution.yaml").read_text()


def test_generation_is_deterministic(tmp_path: Path) -> None:
    first = {path.name: path.read_text() for path in crdgen.write(tmp_path / "a")}
    second = {path.name: path.read_text() for path in crdgen.write(tmp_path / "b")}
    assert first == second
    assert sorted(first) == ["execution.yaml", "runtime.yaml", "warmpool.yaml"]


@pytest.mark.parametrize(
    "crd",
    [crdgen.execution_crd(), crdgen.runtime_crd(), crdgen.warmpool_crd()],
    ids=["execution", "runtime", "warmpool"],
)
def test_schema_is_structural(crd: dict[str, Any]) -> None:
    for path, node in nodes(schema_of(crd)):
        preserves = node.get("x-kubernetes-preserve-unknown-fields") is True
        assert "type" in node or preserves, f"{path} has no type"
        for key in ("$ref", "$defs", "anyOf", "oneOf", "allOf", "not", "title", "nullable", "additionalProperties"):
            assert key not in node, f"{path} has {key}"
        assert node.get("default", "absent") is not None, f"{path} defaults to null"
        assert set(node.get("required", [])) <= set(node.get("properties", {})), path
        if path and not path.endswith("[]"):  # a list's items are described by the list
            assert node.get("description"), f"{path} has no description"
        if node.get("type") == "object":
            assert "properties" in node or preserves, f"{path} is an object without properties"


def test_only_free_form_json_preserves_unknown_fields() -> None:
    preserving = [
        path
        for path, node in nodes(schema_of(crdgen.execution_crd()))
        if node.get("x-kubernetes-preserve-unknown-fields")
    ]
    assert preserving == [".spec.input", ".status.result"]
    for crd in (crdgen.runtime_crd(), crdgen.warmpool_crd()):
        assert not [path for path, node in nodes(schema_of(crd)) if "x-kubernetes-preserve-unknown-fields" in node]


@pytest.mark.parametrize("field", FORBIDDEN_SPEC_FIELDS)
def test_pod_level_fields_are_not_in_the_execution_schema(field: str) -> None:
    spec = schema_of(crdgen.execution_crd())["properties"]["spec"]
    assert field not in spec["properties"]
    # Neither may unknown fields be kept: the API server rejects or prunes them.
    assert "additionalProperties" not in spec
    assert "x-kubernetes-preserve-unknown-fields" not in spec


def test_execution_spec_is_immutable_and_bounded() -> None:
    spec = schema_of(crdgen.execution_crd())["properties"]["spec"]
    assert {"rule": "self == oldSelf", "message": "spec is immutable; create a new Execution instead"} in spec[
        "x-kubernetes-validations"
    ]
    assert spec["required"] == ["language", "code"]
    properties = spec["properties"]
    assert properties["code"]["maxLength"] == 100 * 1024
    assert properties["stdin"]["maxLength"] == 256 * 1024
    assert properties["args"]["maxItems"] == 64
    assert properties["timeoutSeconds"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 3600,
        "description": properties["timeoutSeconds"]["description"],
    }
    assert properties["ttlSecondsAfterFinished"]["minimum"] == 0
    env_name = properties["env"]["items"]["properties"]["name"]
    assert env_name["pattern"] == "^[A-Za-z_][A-Za-z0-9_]*$"
    assert env_name["x-kubernetes-validations"][0]["rule"] == "!self.startsWith('CODEEXEC_')"
    assert properties["env"]["x-kubernetes-list-type"] == "map"
    assert properties["network"]["properties"]["allowedDomains"]["items"]["pattern"].startswith("^")
    # CEL cost estimates need every string and list bounded (the spec is compared whole).
    for path, node in nodes(spec):
        if node.get("type") == "string":
            assert "maxLength" in node, f"{path} unbounded"
        if node.get("type") == "array":
            assert "maxItems" in node, f"{path} unbounded"


def test_execution_crd_shape() -> None:
    crd = crdgen.execution_crd()
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == "executions.codeexec.io"
    assert crd["spec"]["group"] == "codeexec.io"
    assert crd["spec"]["scope"] == "Namespaced"
    assert crd["spec"]["names"]["kind"] == "Execution"
    assert crd["spec"]["names"]["shortNames"] == ["ex"]
    assert crd["spec"]["names"]["categories"] == ["codeexec"]
    version = crd["spec"]["versions"][0]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}
    columns = {column["name"]: column["jsonPath"] for column in version["additionalPrinterColumns"]}
    assert columns == {
        "Language": ".spec.language",
        "Phase": ".status.phase",
        "Queue": ".status.queuePosition",
        "Exit": ".status.exitCode",
        "Duration(ms)": ".status.durationMs",
        "Reason": ".status.reason",
        "Sandbox": ".status.sandbox",
        "Age": ".metadata.creationTimestamp",
    }
    phase = schema_of(crd)["properties"]["status"]["properties"]["phase"]
    assert phase["enum"] == ["Pending", "Running", "Succeeded", "Failed", "TimedOut", "Rejected"]


def test_runtime_crd_shape() -> None:
    crd = crdgen.runtime_crd()
    assert crd["metadata"]["name"] == "runtimes.codeexec.io"
    assert crd["spec"]["scope"] == "Cluster"
    assert crd["spec"]["names"]["shortNames"] == ["rt"]
    version = crd["spec"]["versions"][0]
    assert "subresources" not in version
    columns = [column["name"] for column in version["additionalPrinterColumns"]]
    assert columns == ["Version", "Image", "Aliases", "Age"]
    spec = schema_of(crd)["properties"]["spec"]
    assert spec["required"] == ["image", "command", "fileName"]
    assert spec["properties"]["defaultTimeoutSeconds"]["default"] == 30


def test_warmpool_crd_shape() -> None:
    """What `kubectl get warmpools` (wp) shows, and the spec's bounds; seen failing while the pool had no CRD."""
    crd = crdgen.warmpool_crd()
    assert crd["metadata"]["name"] == "warmpools.codeexec.io"
    assert crd["spec"]["scope"] == "Namespaced"
    assert crd["spec"]["names"]["kind"] == "WarmPool"
    assert crd["spec"]["names"]["plural"] == "warmpools"
    assert crd["spec"]["names"]["shortNames"] == ["wp"]
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = {column["name"]: column["jsonPath"] for column in version["additionalPrinterColumns"]}
    assert columns == {
        "Runtime": ".spec.runtime",
        "Desired": ".spec.replicas",
        "Ready": ".status.readyReplicas",
        "Reason": '.status.conditions[?(@.type=="Ready")].reason',
        "Age": ".metadata.creationTimestamp",
    }
    spec = schema_of(crd)["properties"]["spec"]
    assert spec["required"] == ["runtime", "replicas"]
    assert (spec["properties"]["replicas"]["minimum"], spec["properties"]["replicas"]["maximum"]) == (0, 1000)
    assert sorted(spec["properties"]["resources"]["properties"]) == ["cpu", "memory"]
    status = schema_of(crd)["properties"]["status"]["properties"]
    assert sorted(status) == ["conditions", "observedGeneration", "readyReplicas", "replicas"]


@pytest.mark.parametrize("path", sorted((CRD_DIR / "examples").glob("*.yaml")), ids=lambda path: path.name)
def test_examples_are_valid_executions(path: Path) -> None:
    execution = yaml.safe_load(path.read_text())
    assert (execution["apiVersion"], execution["kind"]) == ("codeexec.io/v1alpha1", "Execution")
    spec = ExecutionSpec.model_validate(execution["spec"])
    assert "return" in spec.code
    assert "console." in spec.code
    assert spec.input is not None


def test_installed_runtimes_follow_the_runner_contract() -> None:
    runtimes = {path.stem: yaml.safe_load(path.read_text()) for path in sorted((CRD_DIR / "runtimes").glob("*.yaml"))}
    assert sorted(runtimes) == ["javascript", "python", "typescript"]
    commands = {}
    for name, runtime in runtimes.items():
        assert (runtime["apiVersion"], runtime["kind"]) == ("codeexec.io/v1alpha1", "Runtime")
        assert runtime["metadata"]["name"] == name
        spec = RuntimeSpec.model_validate(runtime["spec"])
        assert spec.image == f"localhost/codeexec/{name}:0.1.0"
        commands[name] = (spec.command, spec.file_name)
    assert commands == {
        "python": (["python3", "/opt/codeexec/harness.py"], "main.py"),
        "javascript": (["node", "/opt/codeexec/harness.mjs"], "main.js"),
        "typescript": (["node", "/opt/codeexec/harness.mjs", "--typescript"], "main.ts"),
    }
