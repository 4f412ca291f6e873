"""The API's shapes (HTTP gateway and SDK alike) and the pure mappings between them and the Execution resource."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from codeexec.models import GROUP, VERSION, ExecutionSpec, ExecutionStatus, Resources, RuntimeSpec
from codeexec.vocabulary import TERMINAL_PHASES, Phase

API_VERSION = f"{GROUP}/{VERSION}"
# Names the API server makes for Executions created without one: `ex-` and five random characters.
GENERATE_NAME = "ex-"


class Shape(BaseModel):
    """Base: camelCase in JSON, like the resources; unknown fields ignored, so a newer server's answers still parse."""

    model_config = ConfigDict(alias_generator=to_camel, validate_by_name=True, validate_by_alias=True, extra="ignore")


class ExecuteRequest(Shape):
    """What to run: the body of POST /execute and POST /validate. Each field becomes the Execution's spec field
    of the same name (`allowedDomains`: spec.network.allowedDomains; `env`: a name → value map)."""

    model_config = ConfigDict(extra="forbid")

    code: str = Field(description="Source code.")
    language: str = Field(description="A language name or alias (GET /languages).")
    input: Any = Field(default=None, description="Any JSON value handed to the code as `input`.")
    stdin: str | None = Field(default=None, description="Standard input of the program.")
    args: list[str] = Field(default_factory=list, description="Command-line arguments of the program.")
    env: dict[str, str] = Field(default_factory=dict, description="Environment variables of the program.")
    timeout_seconds: int | None = Field(default=None, description="Wall-clock limit; default: the language's.")
    resources: Resources | None = Field(default=None, description="CPU and memory; default: the language's.")
    allowed_domains: list[str] = Field(default_factory=list, description="Host names the code may reach.")
    queue_timeout_seconds: int | None = Field(default=None, description="Longest wait in the queue.")
    ttl_seconds_after_finished: int | None = Field(default=None, description="Delete it this long after it ends.")
    name: str | None = Field(default=None, description="The Execution's name (its id); default: generated.")
    labels: dict[str, str] = Field(default_factory=dict, description="Labels of the Execution (labelSelector).")
    wait: bool = Field(default=True, description="Answer with the finished Execution; false: 202 at once.")

    def spec(self) -> ExecutionSpec:
        """The Execution's spec, validated by the same model the CRD schema is generated from.
        Raises InvalidFields with the request's own field paths."""
        fields: dict[str, Any] = {
            "language": self.language,
            "code": self.code,
            "stdin": self.stdin,
            "input": self.input,
            "args": self.args,
            "env": [{"name": name, "value": value} for name, value in self.env.items()],
            "timeoutSeconds": self.timeout_seconds,
            "resources": self.resources,
            "queueTimeoutSeconds": self.queue_timeout_seconds,
            "ttlSecondsAfterFinished": self.ttl_seconds_after_finished,
        }
        if self.allowed_domains:
            fields["network"] = {"allowedDomains": self.allowed_domains}
        try:
            return ExecutionSpec.model_validate(fields)
        except ValidationError as error:
            names = list(self.env)
            problems = [FieldError(field=_request_path(e["loc"], names), message=e["msg"]) for e in error.errors()]
            raise InvalidFields(problems) from error

    def manifest(self) -> dict[str, Any]:
        """The Execution resource to create."""
        metadata: dict[str, Any] = {"name": self.name} if self.name else {"generateName": GENERATE_NAME}
        if self.labels:
            metadata["labels"] = self.labels
        spec = self.spec().model_dump(by_alias=True, exclude_none=True, exclude_defaults=True, mode="json")
        # `input: null` is a value the code can be given; exclude_defaults drops it, which means the same.
        return {"apiVersion": API_VERSION, "kind": "Execution", "metadata": metadata, "spec": spec}


class FieldError(Shape):
    """One invalid field: its path in the request (dots between names and list indexes) and why."""

    field: str
    message: str
    line: int | None = Field(default=None, description="For a syntax error in `code`: its line (1-based).")
    column: int | None = Field(default=None, description="And its column (1-based), when the parser says.")


class InvalidFields(ValueError):
    """The request's fields break the spec's rules (an HTTP 422)."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(f"{e.field}: {e.message}" if e.field else e.message for e in errors))
        self.errors = errors


# Spec paths that differ from the request's.
_SPEC_TO_REQUEST = {"network": "allowedDomains", "allowedDomains": ""}


def _request_path(loc: tuple[int | str, ...], env_names: list[str]) -> str:
    if len(loc) >= 2 and loc[0] == "env" and isinstance(loc[1], int) and loc[1] < len(env_names):
        loc = ("env", env_names[loc[1]])  # the request's env is a map: name the variable
    parts = [str(_SPEC_TO_REQUEST.get(str(part), part)) for part in loc]
    return ".".join(part for part in parts if part)


def spec_path_to_request(path: str) -> str:
    """An API server's field path (spec.network.allowedDomains[0]) as the request's (allowedDomains[0])."""
    path = path.removeprefix("spec.").removeprefix("spec")
    return path.replace("network.allowedDomains", "allowedDomains")


class ExecutionResult(ExecutionStatus):
    """One Execution in the API's shape: its id (the resource's name), namespace, language and creation time,
    then every field of its status (phase, reason, exitCode, stdout, stderr, result, logs, timing)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(description="The Execution's name.")
    namespace: str = Field(description="Its namespace.")
    language: str = Field(description="The language it asked for.")
    created_at: str | None = Field(default=None, description="When it was created (RFC 3339).")

    @property
    def finished(self) -> bool:
        return self.phase in TERMINAL_PHASES

    @property
    def succeeded(self) -> bool:
        return self.phase == Phase.SUCCEEDED


def execution_result(execution: dict[str, Any]) -> ExecutionResult:
    """An Execution resource in the API's shape."""
    metadata = execution["metadata"]
    return ExecutionResult.model_validate(
        {
            **execution.get("status", {}),
            "id": metadata["name"],
            "namespace": metadata.get("namespace", ""),
            "language": execution.get("spec", {}).get("language", ""),
            "createdAt": metadata.get("creationTimestamp"),
        }
    )


def is_finished(execution: dict[str, Any]) -> bool:
    return execution.get("status", {}).get("phase") in TERMINAL_PHASES


class ExecutionList(Shape):
    """A page of Executions, newest first; `continue` fetches the next page (absent: this was the last)."""

    items: list[ExecutionResult]
    continue_: str | None = Field(default=None, alias="continue", serialization_alias="continue")
    total: int = Field(description="Executions matching the filters in the namespace, over every page.")


class Language(Shape):
    """An installed language (a Runtime)."""

    name: str
    version: str = ""
    aliases: list[str] = Field(default_factory=list)
    description: str = ""
    file_name: str = Field(default="", description="Name of the code's file in the sandbox: its extension.")
    default_timeout_seconds: int
    max_timeout_seconds: int | None = None
    default_resources: Resources | None = None
    max_resources: Resources | None = None


def language(runtime: dict[str, Any]) -> Language:
    spec = RuntimeSpec.model_validate(runtime["spec"])
    return Language.model_validate(
        {"name": runtime["metadata"]["name"], **spec.model_dump(include=set(Language.model_fields) - {"name"})}
    )


class ValidationResult(Shape):
    """The answer of POST /validate: nothing ran."""

    valid: bool
    errors: list[FieldError] = Field(default_factory=list)


def newest_first(executions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Newest creation first; same second (the API's resolution): by name, descending, so pages are stable."""
    return sorted(executions, key=_position, reverse=True)


def page(
    executions: list[dict[str, Any]], limit: int, offset: int = 0, continue_: str | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of `executions` (already filtered), newest first: after the position a `continue` token names
    (robust to Executions created meanwhile), else from `offset`; and the token of the next page."""
    ordered = newest_first(executions)
    start = offset
    if continue_:
        after = decode_continue(continue_)
        start = next(
            (
                i
                for i, e in enumerate(ordered)
                if (e["metadata"].get("creationTimestamp", ""), e["metadata"]["name"]) < after
            ),
            len(ordered),
        )
    chosen = ordered[start : start + limit]
    if start + limit >= len(ordered) or not chosen:
        return chosen, None
    return chosen, encode_continue(_position(chosen[-1]))


def _position(execution: dict[str, Any]) -> tuple[str, str]:
    return execution["metadata"].get("creationTimestamp", ""), execution["metadata"]["name"]


def encode_continue(position: tuple[str, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(position)).encode()).decode()


def decode_continue(token: str) -> tuple[str, str]:
    try:
        created, name = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, TypeError, binascii.Error) as error:
        raise InvalidFields([FieldError(field="continue", message="not a token this API returned")]) from error
    return str(created), str(name)
