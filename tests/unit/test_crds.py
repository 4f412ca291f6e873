"""The generated CRDs (their drift: test_generated.py): structural schemas, names, columns and examples."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from codeexec import crdgen
from codeexec.__main__ import main
from codeexec.models import ExecutionSpec, RuntimeSpec, SandboxBindingSpec
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
        str(tmp_path / "sandboxbinding.yaml"),
    ]
    assert (tmp_path / "execution.yaml").read_text() == (CRD_DIR / "execution.yaml").read_text()


def test_generation_is_deterministic(tmp_path: Path) -> None:
    first = {path.name: path.read_text() for path in crdgen.write(tmp_path / "a")}
    second = {path.name: path.read_text() for path in crdgen.write(tmp_path / "b")}
    assert first == second
    assert sorted(first) == ["execution.yaml", "runtime.yaml", "sandboxbinding.yaml", "warmpool.yaml"]


@pytest.mark.parametrize(
    "crd",
    [crdgen.execution_crd(), crdgen.runtime_crd(), crdgen.warmpool_crd(), crdgen.sandboxbinding_crd()],
    ids=["execution", "runtime", "warmpool", "sandboxbinding"],
)
def test_schema_is_structural(crd: dict[str, Any]) -> None:
    for path, node in nodes(schema_of(crd)):
        preserves = node.get("x-kubernetes-preserve-unknown-fields") is True
        assert "type" in node or preserves, f"{path} has no type"
        for key in (
            "$ref",
            "$defs",
            "anyOf",
            "oneOf",
            "allOf",
            "not",
            "title",
            "nullable",
            "additionalProperties",
            "const",
        ):
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
    for crd in (crdgen.runtime_crd(), crdgen.warmpool_crd(), crdgen.sandboxbinding_crd()):
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


def test_sandboxbinding_crd_shape() -> None:
    """What `kubectl get sandboxbindings` (sbd) shows, the db binding's defaults and bounds, and CEL rules that
    the model mirrors (the API server refuses what the operator would call InvalidSpec)."""
    crd = crdgen.sandboxbinding_crd()
    assert crd["metadata"]["name"] == "sandboxbindings.codeexec.io"
    assert crd["spec"]["scope"] == "Namespaced"
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["singular"], names["shortNames"]) == (
        "SandboxBinding",
        "sandboxbindings",
        "sandboxbinding",
        ["sbd"],
    )
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [(c["name"], c["jsonPath"], c.get("priority", 0)) for c in version["additionalPrinterColumns"]]
    assert [(name, path) for name, path, priority in columns if priority == 0] == [
        ("Type", ".status.type"),
        ("Engine", ".spec.db.engine"),
        ("Models", ".spec.ai.models"),
        ("In Use", ".status.inUse"),
        ("Age", ".metadata.creationTimestamp"),
    ]
    assert [name for name, _, priority in columns if priority == 1] == ["ReadOnly", "Endpoint", "Reason", "Used By"]
    spec = schema_of(crd)["properties"]["spec"]
    assert "required" not in spec
    assert spec["x-kubernetes-validations"] == [
        {"rule": "has(self.db) != has(self.ai)", "message": "exactly one of db, ai is required"}
    ]
    db = spec["properties"]["db"]
    defaults = {name: node.get("default") for name, node in db["properties"].items()}
    assert defaults == {
        "engine": "sqlite",
        "database": None,
        "dsnSecretRef": None,
        "readOnly": False,
        "statementTimeoutMs": 5000,
        "maxRowsPerCall": 1000,
        "maxBytesPerCall": 1048576,
        "maxRowsPerExecution": 100000,
    }
    assert db["properties"]["engine"]["enum"] == ["sqlite", "postgres"]
    bounds = {name: (node.get("minimum"), node.get("maximum")) for name, node in db["properties"].items()}
    assert bounds["statementTimeoutMs"] == (1, 60000)
    assert bounds["maxRowsPerCall"] == (1, 100000)
    assert bounds["maxBytesPerCall"] == (1024, 16 * 1024 * 1024)
    assert [rule["rule"] for rule in db["x-kubernetes-validations"]] == [
        "(has(self.engine) && self.engine == 'postgres') == has(self.dsnSecretRef)",
        "!(has(self.engine) && self.engine == 'postgres' && has(self.database))",
    ]
    ai = spec["properties"]["ai"]
    assert ai["required"] == ["endpoint", "models"]
    assert {name: node.get("default") for name, node in ai["properties"].items()} == {
        "endpoint": None,
        "apiKeySecretRef": None,
        "models": None,
        "maxRequestsPerExecution": 100,
        "maxTokensPerExecution": 100000,
        "requestTimeoutMs": 60000,
    }
    assert all(node.get("description") for node in ai["properties"].values())
    models = ai["properties"]["models"]
    assert (models["minItems"], models["maxItems"], models["x-kubernetes-list-type"]) == (1, 32, "set")
    assert (ai["properties"]["requestTimeoutMs"]["minimum"], ai["properties"]["requestTimeoutMs"]["maximum"]) == (
        1,
        300000,
    )
    assert ai["properties"]["apiKeySecretRef"]["required"] == ["name", "key"]
    status = schema_of(crd)["properties"]["status"]["properties"]
    assert sorted(status) == ["conditions", "inUse", "observedGeneration", "type", "usedBy"]
    assert status["type"]["enum"] == ["db", "ai"]
    assert status["usedBy"]["maxItems"] == 20


def test_generated_crds_have_no_yaml_anchors() -> None:
    """A list pydantic shares between two schemas (SecretKeyRef's `required`) is written out in both."""
    for content in crdgen.rendered_files().values():
        assert "&id" not in content and "*id" not in content


AI = {"endpoint": "http://llm.models.svc:8080/v1", "models": ["qwen2.5:0.5b"]}


@pytest.mark.parametrize(
    ("ai", "valid"),
    [
        (AI, True),
        ({**AI, "endpoint": "https://api.example.com/v1/", "apiKeySecretRef": {"name": "k", "key": "key"}}, True),
        ({**AI, "models": ["@cf/meta/llama-3-8b-instruct", "Qwen/Qwen2.5-0.5B-Instruct-GGUF"]}, True),
        ({**AI, "requestTimeoutMs": 300000, "maxRequestsPerExecution": 1, "maxTokensPerExecution": 1}, True),
        ({"models": ["m"]}, False),  # no endpoint
        ({"endpoint": AI["endpoint"]}, False),  # no models
        ({**AI, "models": []}, False),
        ({**AI, "models": [f"m{i}" for i in range(33)]}, False),
        ({**AI, "models": ["m", "m"]}, False),
        ({**AI, "models": ["two words"]}, False),
        ({**AI, "endpoint": "ftp://llm/v1"}, False),
        ({**AI, "endpoint": "http://user:secret@llm/v1"}, False),  # credentials belong in the Secret
        ({**AI, "endpoint": "http://llm/v1?key=secret"}, False),
        ({**AI, "endpoint": "llm.models.svc:8080"}, False),
        ({**AI, "requestTimeoutMs": 300001}, False),
        ({**AI, "requestTimeoutMs": 0}, False),
        ({**AI, "maxTokensPerExecution": 0}, False),
        ({**AI, "apiKeySecretRef": {"name": "k"}}, False),
        ({**AI, "engine": "sqlite"}, False),
    ],
)
def test_ai_binding_rules(ai: dict[str, Any], valid: bool) -> None:
    """The model says what the CRD's schema says (bounds, patterns, required fields)."""
    try:
        SandboxBindingSpec.model_validate({"ai": ai})
    except ValidationError:
        assert not valid
    else:
        assert valid


def test_a_binding_is_exactly_one_of_db_ai() -> None:
    assert SandboxBindingSpec.model_validate({"db": {}}).type == "db"
    assert SandboxBindingSpec.model_validate({"ai": AI}).type == "ai"
    for spec in ({}, {"db": {}, "ai": AI}):
        with pytest.raises(ValidationError, match="exactly one of db, ai"):
            SandboxBindingSpec.model_validate(spec)


@pytest.mark.parametrize(
    ("db", "valid"),
    [
        ({}, True),
        ({"engine": "sqlite", "database": "notes"}, True),
        ({"engine": "postgres", "dsnSecretRef": {"name": "pg", "key": "dsn"}}, True),
        ({"engine": "postgres"}, False),  # no DSN
        ({"dsnSecretRef": {"name": "pg", "key": "dsn"}}, False),  # sqlite with a DSN
        ({"engine": "postgres", "dsnSecretRef": {"name": "pg", "key": "dsn"}, "database": "x"}, False),
        ({"database": "Not_A_Label"}, False),
        ({"engine": "mysql"}, False),
        ({"statementTimeoutMs": 60001}, False),
        ({"maxBytesPerCall": 1023}, False),
        ({"ai": {}}, False),  # ai is spec.ai, not in db
    ],
)
def test_sandboxbinding_spec_rules(db: dict[str, Any], valid: bool) -> None:
    """The model says what the CRD's schema and CEL rules say."""
    try:
        SandboxBindingSpec.model_validate({"db": db})
    except ValidationError:
        assert not valid
    else:
        assert valid


def test_execution_bindings_and_their_usage() -> None:
    """spec.bindings: a bounded set of object names; status.bindings: the broker's counts, a map by name."""
    schema = schema_of(crdgen.execution_crd())["properties"]
    bindings = schema["spec"]["properties"]["bindings"]
    assert (bindings["maxItems"], bindings["x-kubernetes-list-type"]) == (8, "set")
    assert bindings["items"]["maxLength"] == 253
    usage = schema["status"]["properties"]["bindings"]
    assert (usage["x-kubernetes-list-type"], usage["x-kubernetes-list-map-keys"]) == ("map", ["name"])
    assert sorted(usage["items"]["properties"]) == [
        "calls",
        "errors",
        "lastError",
        "name",
        "refused",
        "rowsRead",
        "rowsWritten",
        "tokens",
        "type",
    ]
    assert usage["items"]["properties"]["type"]["enum"] == ["db", "ai"]
    # The API server would default them into entries of the other type.
    assert not any("default" in usage["items"]["properties"][name] for name in ("rowsRead", "rowsWritten", "tokens"))
    assert usage["items"]["properties"]["lastError"]["maxLength"] == 1024
    with pytest.raises(ValidationError, match="duplicate names: notes"):
        ExecutionSpec.model_validate({"language": "python", "code": "", "bindings": ["notes", "notes"]})
    with pytest.raises(ValidationError):
        ExecutionSpec.model_validate({"language": "python", "code": "", "bindings": ["Notes"]})


BINDING_EXAMPLES = sorted((CRD_DIR / "examples").glob("binding-*.yaml"))
EXECUTION_EXAMPLES = sorted(set((CRD_DIR / "examples").glob("*.yaml")) - set(BINDING_EXAMPLES))


@pytest.mark.parametrize("path", EXECUTION_EXAMPLES, ids=lambda path: path.name)
def test_examples_are_valid_executions(path: Path) -> None:
    execution = yaml.safe_load(path.read_text())
    assert (execution["apiVersion"], execution["kind"]) == ("codeexec.io/v1alpha1", "Execution")
    spec = ExecutionSpec.model_validate(execution["spec"])
    assert "return" in spec.code
    assert "console." in spec.code
    assert spec.input is not None
    # The bindings it names are the binding examples (the demo applies them first).
    assert set(spec.bindings) <= {yaml.safe_load(p.read_text())["metadata"]["name"] for p in BINDING_EXAMPLES}


@pytest.mark.parametrize("path", BINDING_EXAMPLES, ids=lambda path: path.name)
def test_binding_examples_are_valid_sandboxbindings(path: Path) -> None:
    binding = yaml.safe_load(path.read_text())
    assert (binding["apiVersion"], binding["kind"]) == ("codeexec.io/v1alpha1", "SandboxBinding")
    SandboxBindingSpec.model_validate(binding["spec"])


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
