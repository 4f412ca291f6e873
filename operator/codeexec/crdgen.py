"""Generates the CustomResourceDefinitions from the pydantic models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from codeexec.models import (
    GROUP,
    VERSION,
    ExecutionSpec,
    ExecutionStatus,
    RuntimeSpec,
    SandboxBindingSpec,
    SandboxBindingStatus,
    WarmPoolSpec,
    WarmPoolStatus,
)

JsonSchema = dict[str, Any]

# Keys of pydantic's JSON Schema that a structural CRD schema must not carry.
# additionalProperties=false (extra="forbid") is expressed in a CRD by leaving
# the field out of `properties`: the API server rejects or prunes unknown fields.
_DROPPED_KEYS = {"title", "$defs", "additionalProperties"}


def structural_schema(model: type[BaseModel]) -> JsonSchema:
    """The model's JSON Schema made structural: refs inlined, nullables collapsed."""
    schema = model.model_json_schema(by_alias=True)
    return _structural(schema, schema.get("$defs", {}))


def _structural(node: JsonSchema, defs: dict[str, JsonSchema]) -> JsonSchema:
    if "$ref" in node:
        target = defs[node["$ref"].removeprefix("#/$defs/")]
        siblings = {key: value for key, value in node.items() if key != "$ref"}
        return _structural({**target, **siblings}, defs)
    if "anyOf" in node:
        # Optional[X] comes as anyOf [X, null]; in a CRD "optional" means "may be absent".
        branches = [branch for branch in node["anyOf"] if branch != {"type": "null"}]
        if len(branches) != 1:
            raise ValueError(f"cannot express a union in a structural schema: {node}")
        siblings = {key: value for key, value in node.items() if key != "anyOf"}
        return _structural({**branches[0], **siblings}, defs)

    result: JsonSchema = {}
    for key, value in node.items():
        if key in _DROPPED_KEYS or (key == "default" and value is None):
            continue
        if key == "properties":
            result[key] = {name: _structural(prop, defs) for name, prop in value.items()}
        elif key == "items":
            result[key] = _structural(value, defs)
        elif key == "const":
            # A one-value Literal; a CRD schema has no `const`.
            result["enum"] = [value]
        else:
            result[key] = value
    return result


def _crd(
    *,
    kind: str,
    plural: str,
    short_name: str,
    scope: str,
    spec_model: type[BaseModel],
    status_model: type[BaseModel] | None,
    description: str,
    columns: list[dict[str, Any]],
) -> dict[str, Any]:
    properties: dict[str, JsonSchema] = {"spec": structural_schema(spec_model)}
    if status_model is not None:
        properties["status"] = structural_schema(status_model)
    version: dict[str, Any] = {
        "name": VERSION,
        "served": True,
        "storage": True,
        "schema": {
            "openAPIV3Schema": {
                "type": "object",
                "description": description,
                "required": ["spec"],
                "properties": properties,
            }
        },
        "additionalPrinterColumns": [
            *columns,
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    }
    if status_model is not None:
        version["subresources"] = {"status": {}}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": scope,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short_name],
                "categories": ["codeexec"],
            },
            "versions": [version],
        },
    }


def execution_crd() -> dict[str, Any]:
    return _crd(
        kind="Execution",
        plural="executions",
        short_name="ex",
        scope="Namespaced",
        spec_model=ExecutionSpec,
        status_model=ExecutionStatus,
        description="One run of untrusted code in a single-use gVisor sandbox pod.",
        columns=[
            {"name": "Language", "type": "string", "jsonPath": ".spec.language"},
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Queue", "type": "integer", "jsonPath": ".status.queuePosition"},
            {"name": "Exit", "type": "integer", "jsonPath": ".status.exitCode"},
            {"name": "Duration(ms)", "type": "integer", "jsonPath": ".status.durationMs"},
            {
                "name": "Reason",
                "type": "string",
                "jsonPath": ".status.reason",
                "priority": 1,
            },
            {"name": "Sandbox", "type": "string", "jsonPath": ".status.sandbox", "priority": 1},
        ],
    )


def runtime_crd() -> dict[str, Any]:
    return _crd(
        kind="Runtime",
        plural="runtimes",
        short_name="rt",
        scope="Cluster",
        spec_model=RuntimeSpec,
        status_model=None,
        description="An installed language that Executions can name.",
        columns=[
            {"name": "Version", "type": "string", "jsonPath": ".spec.version"},
            {"name": "Image", "type": "string", "jsonPath": ".spec.image"},
            {"name": "Aliases", "type": "string", "jsonPath": ".spec.aliases"},
        ],
    )


# The reason of a resource's Ready condition, in `kubectl get -o wide` (WarmPool, SandboxBinding).
READY_REASON_COLUMN: dict[str, Any] = {
    "name": "Reason",
    "type": "string",
    "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
    "priority": 1,
}


def warmpool_crd() -> dict[str, Any]:
    return _crd(
        kind="WarmPool",
        plural="warmpools",
        short_name="wp",
        scope="Namespaced",
        spec_model=WarmPoolSpec,
        status_model=WarmPoolStatus,
        description=(
            "Started, single-use sandboxes of one Runtime and size that this namespace keeps ready: an "
            "Execution that fits claims one instead of waiting for a new pod, and the pool starts another."
        ),
        columns=[
            {"name": "Runtime", "type": "string", "jsonPath": ".spec.runtime"},
            {"name": "Desired", "type": "integer", "jsonPath": ".spec.replicas"},
            {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"},
            READY_REASON_COLUMN,
        ],
    )


def sandboxbinding_crd() -> dict[str, Any]:
    return _crd(
        kind="SandboxBinding",
        plural="sandboxbindings",
        short_name="sbd",
        scope="Namespaced",
        spec_model=SandboxBindingSpec,
        status_model=SandboxBindingStatus,
        description=(
            "A capability (a database, a model endpoint) this namespace grants to every Execution of it that names "
            "the binding in spec.bindings; the code uses it through the broker and never holds its credentials."
        ),
        # One row per binding whatever its type: a column of the other type's field stays empty.
        columns=[
            {"name": "Type", "type": "string", "jsonPath": ".status.type"},
            {"name": "Engine", "type": "string", "jsonPath": ".spec.db.engine"},
            {"name": "Models", "type": "string", "jsonPath": ".spec.ai.models"},
            {"name": "In Use", "type": "integer", "jsonPath": ".status.inUse"},
            {"name": "ReadOnly", "type": "boolean", "jsonPath": ".spec.db.readOnly", "priority": 1},
            {"name": "Endpoint", "type": "string", "jsonPath": ".spec.ai.endpoint", "priority": 1},
            READY_REASON_COLUMN,
            {"name": "Used By", "type": "string", "jsonPath": ".status.usedBy", "priority": 1},
        ],
    )


class _NoAliases(yaml.SafeDumper):
    """Writes a value pydantic's schema shares between two places (a `required` list) out in both."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render(crd: dict[str, Any]) -> str:
    """Deterministic YAML: fixed key order, no line wrapping, no anchors."""
    header = "# Generated by `python -m codeexec crds` from operator/codeexec/models.py. Do not edit.\n"
    body = yaml.dump(crd, Dumper=_NoAliases, sort_keys=True, width=1_000_000, allow_unicode=True)
    return header + body


def rendered_files() -> dict[str, str]:
    """File name → content of every generated CRD file."""
    return {
        "execution.yaml": render(execution_crd()),
        "runtime.yaml": render(runtime_crd()),
        "warmpool.yaml": render(warmpool_crd()),
        "sandboxbinding.yaml": render(sandboxbinding_crd()),
    }


def write(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, content in rendered_files().items():
        path = out_dir / name
        path.write_text(content, encoding="utf-8")
        written.append(path)
    return written
