"""Generates every copy of the operator settings and the Runtime and WarmPool specs from the models (the one
source): the chart's values schema and values.yaml comments, the README's table, and the CRDs."""

from __future__ import annotations

import copy
import json
import re
import textwrap
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo

from codeexec import crdgen
from codeexec.config import OperatorConfig, variable_name
from codeexec.models import RuntimeSpec, WarmPoolSpec

CHART = Path("charts/code-exec")
VALUES = CHART / "values.yaml"
SCHEMA = CHART / "values.schema.json"
README = Path("README.md")
CRDS = Path("crds")
# Settings the chart sets from other values, not from config.<name>: the value that sets each.
DERIVED_SETTINGS = {
    "runtime_class": "runtimeClass.name",
    "namespaces": "operator.watchNamespaces",
    "log_level": "operator.logLevel",
    "metrics_port": "metrics.port",
    "webhook_port": "webhook.port",
    "webhook_cert_dir": "(the webhook Secret's mount)",
    "peering": "(the release's ClusterKopfPeering)",
    "broker_service": "broker.enabled",
    "binding_token_key_file": "(the binding token key Secret's mount)",
}
# The values of a bundled Runtime that are fields of its spec (the rest is the chart's own).
RUNTIME_SPEC_VALUES = ("defaultTimeoutSeconds", "maxTimeoutSeconds", "defaultResources", "maxResources")
VALUES_BEGIN = "  # BEGIN generated from operator/codeexec/config.py by `make generate`: edit there, not here.\n"
VALUES_END = "  # END generated\n"
README_BEGIN = "<!-- config-table:start -->\n"
README_END = "<!-- config-table:end -->"
COMMENT_WIDTH = 100


def value_key(field_name: str) -> str:
    """The chart value of a setting, e.g. keep_pods → keepPods (the chart's `snakecase` turns it back)."""
    head, *rest = field_name.split("_")
    return head + "".join(word.capitalize() for word in rest)


def chart_settings() -> dict[str, FieldInfo]:
    """The settings values.yaml holds under `config`."""
    return {name: field for name, field in OperatorConfig.model_fields.items() if name not in DERIVED_SETTINGS}


def _field_schema(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = OperatorConfig.model_json_schema()["properties"][name]
    return {key: value for key, value in schema.items() if key not in {"title", "default"}}


def _bounds(schema: dict[str, Any]) -> str:
    if "enum" in schema:
        return f"One of {', '.join(str(item) for item in schema['enum'])}."
    low, high = schema.get("minimum"), schema.get("maximum")
    if low is not None and high is not None:
        return f"From {low} to {high}."
    if low is not None:
        return f"At least {low}."
    return ""


def _doc(name: str, field: FieldInfo) -> str:
    """The field's description and its bounds, in one sentence or a few."""
    return " ".join(part for part in (field.description or "", _bounds(_field_schema(name))) if part)


def _shown(default: object) -> str:
    if isinstance(default, tuple):
        default = ",".join(default)
    elif isinstance(default, bool):
        default = str(default).lower()
    return f"`{default}`" if default != "" else "(empty)"


def markdown_table() -> str:
    """The settings as a Markdown table (variable, chart value, default, meaning): the README's section."""
    rows = ["| variable | chart value | default | meaning |", "|---|---|---|---|"]
    for name, field in OperatorConfig.model_fields.items():
        chart_value = DERIVED_SETTINGS.get(name, f"`config.{value_key(name)}`")
        if not chart_value.startswith(("`", "(")):
            chart_value = f"`{chart_value}`"
        listed = "Comma-separated list. " if isinstance(field.default, tuple) else ""
        rows.append(
            f"| `{variable_name(name)}` | {chart_value} | {_shown(field.default)} | {listed}{_doc(name, field)} |"
        )
    return "\n".join(rows) + "\n"


def values_config_block() -> str:
    """The generated lines of values.yaml's `config` section: each setting, commented, with its default."""
    lines = [VALUES_BEGIN]
    for name, field in chart_settings().items():
        comment = textwrap.wrap(_doc(name, field), COMMENT_WIDTH - len("  # "))
        lines += [f"  # {line}\n" for line in comment]
        default = list(field.default) if isinstance(field.default, tuple) else field.default
        lines.append(f"  {value_key(name)}: {json.dumps(default)}\n")
    lines.append(VALUES_END)
    return "".join(lines)


def config_schema() -> dict[str, Any]:
    """The values schema of `config`."""
    return {
        "description": (
            "Sandbox settings, passed to the operator as CODEEXEC_<NAME_IN_CAPITALS> (generated from "
            "operator/codeexec/config.py by `make generate`)."
        ),
        "type": "object",
        "additionalProperties": False,
        "properties": {value_key(name): _field_schema(name) for name in chart_settings()},
    }


def _closed(schema: dict[str, Any]) -> dict[str, Any]:
    """A structural schema as a values schema: no defaults (values.yaml has them), unknown keys refused."""
    result = {key: value for key, value in schema.items() if key != "default"}
    if "properties" in schema:
        result["additionalProperties"] = False
        result["properties"] = {key: _closed(value) for key, value in schema["properties"].items()}
    return result


def values_schema(current: dict[str, Any]) -> dict[str, Any]:
    """The values schema with its generated parts replaced: `config`, the Runtime spec fields of a
    bundled Runtime's values, and the spec fields of a WarmPool's values (all of its spec)."""
    spec = crdgen.structural_schema(RuntimeSpec)["properties"]
    schema = copy.deepcopy(current)
    schema["properties"]["config"] = config_schema()
    runtime = schema["definitions"]["runtime"]["properties"]
    for key in RUNTIME_SPEC_VALUES:
        runtime[key] = _closed(spec[key])
    pool = schema["definitions"]["warmPool"]["properties"]
    for key, value in crdgen.structural_schema(WarmPoolSpec)["properties"].items():
        pool[key] = _closed(value)
    return schema


def _replace_between(text: str, begin: str, end: str, new: str) -> str:
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.DOTALL)
    if len(pattern.findall(text)) != 1:
        raise ValueError(f"expected one region between {begin.strip()!r} and {end.strip()!r}")
    return pattern.sub(lambda _: new, text)


def generated_files(root: Path) -> dict[Path, str]:
    """Path (under root) → the content it must have."""
    values = (root / VALUES).read_text(encoding="utf-8")
    readme = (root / README).read_text(encoding="utf-8")
    schema = json.loads((root / SCHEMA).read_text(encoding="utf-8"))
    files = {
        VALUES: _replace_between(values, VALUES_BEGIN, VALUES_END, values_config_block()),
        README: _replace_between(readme, README_BEGIN, README_END, README_BEGIN + markdown_table() + README_END),
        SCHEMA: json.dumps(values_schema(schema), indent=2, ensure_ascii=False) + "\n",
    }
    files |= {CRDS / name: content for name, content in crdgen.rendered_files().items()}
    return files


def stale(root: Path) -> list[Path]:
    """The generated files that differ from what the models say."""
    return [path for path, content in generated_files(root).items() if _read(root / path) != content]


def write(root: Path) -> list[Path]:
    """Writes the stale generated files; returns them."""
    files = generated_files(root)
    changed = [path for path, content in files.items() if _read(root / path) != content]
    for path in changed:
        (root / path).write_text(files[path], encoding="utf-8")
    return changed


def _read(path: Path) -> str | None:
    return path.read_text(encoding="utf-8") if path.exists() else None
