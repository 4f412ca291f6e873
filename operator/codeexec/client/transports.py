"""The SDK's two ways in: the Kubernetes API itself (also what the gateway runs as each caller) or the gateway's URL."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp

from codeexec.client import errors, syntax
from codeexec.client.kubeapi import KubeApi
from codeexec.client.shapes import (
    ExecuteRequest,
    ExecutionList,
    ExecutionResult,
    FieldError,
    InvalidFields,
    Language,
    ValidationResult,
    execution_result,
    is_finished,
    language,
    page,
)
from codeexec.vocabulary import SANDBOX_CONTAINER, Phase
from codeexec_runner.contract import REPORT_PREFIX

# Called with each version of an Execution seen while waiting for it (e.g. the CLI's progress line).
OnUpdate = Callable[[ExecutionResult], None]
# How long a call waits for its Execution to finish unless told otherwise: a queue and a long program fit.
DEFAULT_WAIT_SECONDS = 300.0


class Transport(Protocol):
    """What a client can do; both transports answer with the same shapes and raise the same errors."""

    async def execute(
        self, request: ExecuteRequest, wait_seconds: float = DEFAULT_WAIT_SECONDS, on_update: OnUpdate | None = None
    ) -> ExecutionResult:
        """Creates the Execution; with request.wait, answers once it finished (WaitTimeout after `wait_seconds`).
        `on_update` sees each version while it waits, where the transport sees them (the Kubernetes API's)."""
        ...

    async def validate(self, request: ExecuteRequest) -> ValidationResult: ...

    async def get(self, execution_id: str) -> ExecutionResult: ...

    async def list_page(
        self,
        limit: int = 50,
        offset: int = 0,
        continue_: str | None = None,
        language: str | None = None,
        phase: str | None = None,
        label_selector: str | None = None,
    ) -> ExecutionList: ...

    async def delete(self, execution_id: str) -> None: ...

    async def languages(self) -> list[Language]: ...

    async def close(self) -> None: ...


def _pod_name(execution: dict[str, Any]) -> str | None:
    name: str | None = execution.get("status", {}).get("podName")
    return name


def _running(execution: dict[str, Any]) -> bool:
    return execution.get("status", {}).get("phase") == Phase.RUNNING and _pod_name(execution) is not None


def raise_if_rejected(result: ExecutionResult) -> ExecutionResult:
    """The operator refused the spec (phase Rejected): InvalidRequest with the status's stable reason."""
    if result.phase == Phase.REJECTED:
        raise errors.InvalidRequest(
            result.message or "the Execution was rejected",
            [FieldError(field="", message=result.message or "")],
            reason=result.reason,
            execution_id=result.id,
        )
    return result


class KubeTransport:
    """Executions as resources, through the API server, as the connection's user: nothing else is stored."""

    def __init__(self, api: KubeApi, session: aiohttp.ClientSession | None = None) -> None:
        self.api = api
        self._owned_session = session

    async def execute(
        self, request: ExecuteRequest, wait_seconds: float = DEFAULT_WAIT_SECONDS, on_update: OnUpdate | None = None
    ) -> ExecutionResult:
        try:
            created = await self.api.create_execution(request.manifest())
        except InvalidFields as error:
            raise errors.InvalidRequest(str(error), error.errors) from error
        if not request.wait:
            return execution_result(created)

        def finished(execution: dict[str, Any]) -> bool:
            if on_update is not None:
                on_update(execution_result(execution))
            return is_finished(execution)

        return raise_if_rejected(execution_result(await self.wait(created, wait_seconds, finished)))

    async def wait(
        self, execution: dict[str, Any], seconds: float, until: Callable[[dict[str, Any]], bool] = is_finished
    ) -> dict[str, Any]:
        """The Execution once `until` holds (by default: once finished), followed by a watch from the version in
        hand (no polling)."""
        name = execution["metadata"]["name"]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        try:
            async with asyncio.timeout(seconds):
                while not until(execution):
                    try:
                        remaining = int(deadline - loop.time()) + 1
                        version = execution["metadata"]["resourceVersion"]
                        async for execution in self.api.watch_execution(name, version, remaining):
                            if until(execution):
                                break
                    except errors.Expired:
                        execution = await self.api.get_execution(name)
        except TimeoutError:
            raise errors.WaitTimeout(
                f"execution {name} did not finish within {seconds:g} s; it goes on (GET /executions/{name})",
                execution_id=name,
            ) from None
        return execution

    async def output(self, execution_id: str, seconds: float) -> AsyncIterator[tuple[str, str]]:
        """Server-sent events of an Execution: ("output", line) for each line its program writes while it runs
        (the sandbox pod's log, followed), then ("result", the finished Execution as JSON)."""
        execution = await self.api.get_execution(execution_id)
        # Running: the sandbox's container runs (a pod still starting has no log to follow yet).
        execution = await self.wait(execution, seconds, lambda e: is_finished(e) or _running(e))
        pod = _pod_name(execution)
        if pod and not is_finished(execution):
            # Empty lines are held back: the runner puts one before its report (to the operator), not the program.
            held = 0
            try:
                async for raw in self.api.follow_log(pod, SANDBOX_CONTAINER):
                    line = raw.decode(errors="replace").rstrip("\n")
                    if raw.startswith(REPORT_PREFIX):
                        held = 0
                    elif not line:
                        held += 1
                    else:
                        for _ in range(held):
                            yield "output", ""
                        held = 0
                        yield "output", line
            except errors.CodeExecError:
                pass  # the pod went (or never started): the final status says what happened
            for _ in range(held):
                yield "output", ""
        finished = await self.wait(await self.api.get_execution(execution_id), seconds)
        yield "result", execution_result(finished).model_dump_json(by_alias=True, exclude_none=True)

    async def validate(self, request: ExecuteRequest) -> ValidationResult:
        try:
            manifest = request.manifest()
        except InvalidFields as error:
            return ValidationResult(valid=False, errors=error.errors)
        runtimes = {name: lang.name for lang in await self.languages() for name in (lang.name, *lang.aliases)}
        if request.language not in runtimes:
            message = f"{request.language!r} is not an installed language ({', '.join(sorted(runtimes))})"
            return ValidationResult(valid=False, errors=[FieldError(field="language", message=message)])
        try:
            await self.api.create_execution(manifest, dry_run=True)
        except errors.InvalidRequest as error:
            return ValidationResult(valid=False, errors=error.errors)
        check = syntax.checker(request, runtimes[request.language])
        if check is None:
            return ValidationResult(valid=True)
        checked = await self.execute(check, syntax.CHECK_TIMEOUT_SECONDS * 4)
        with contextlib.suppress(errors.CodeExecError):  # a caller who may create but not delete keeps it
            await self.api.delete_execution(checked.id)
        if not checked.succeeded:
            failed = f"the syntax check (execution {checked.id}) ended {checked.phase}: {checked.message}"
            return ValidationResult(valid=False, errors=[FieldError(field="code", message=failed)])
        found = syntax.diagnostics(checked.result)
        return ValidationResult(valid=not found, errors=found)

    async def get(self, execution_id: str) -> ExecutionResult:
        return execution_result(await self.api.get_execution(execution_id))

    async def list_page(
        self,
        limit: int = 50,
        offset: int = 0,
        continue_: str | None = None,
        language: str | None = None,
        phase: str | None = None,
        label_selector: str | None = None,
    ) -> ExecutionList:
        try:
            items = [
                item
                for item in await self.api.list_executions(label_selector)
                if (language is None or item.get("spec", {}).get("language") == language)
                and (phase is None or item.get("status", {}).get("phase") == phase)
            ]
            chosen, next_token = page(items, limit, offset, continue_)
        except InvalidFields as error:
            raise errors.InvalidRequest(str(error), error.errors) from error
        return ExecutionList(items=[execution_result(item) for item in chosen], continue_=next_token, total=len(items))

    async def delete(self, execution_id: str) -> None:
        await self.api.delete_execution(execution_id)

    async def languages(self) -> list[Language]:
        return sorted((language(runtime) for runtime in await self.api.list_runtimes()), key=lambda lang: lang.name)

    async def close(self) -> None:
        if self._owned_session is not None:
            await self._owned_session.close()


class GatewayTransport:
    """The same calls over the gateway's HTTP API, with a Kubernetes bearer token."""

    def __init__(self, url: str, token: str, namespace: str | None = None) -> None:
        self._url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        self._namespace = namespace
        self._session: aiohttp.ClientSession | None = None

    async def execute(
        self, request: ExecuteRequest, wait_seconds: float = DEFAULT_WAIT_SECONDS, on_update: OnUpdate | None = None
    ) -> ExecutionResult:
        headers = {"Prefer": f"wait={int(wait_seconds)}"}
        body = request.model_dump(by_alias=True, exclude_defaults=True, mode="json")
        body["wait"] = request.wait  # always explicit
        answer = await self._call("POST", "/execute", body=body, headers=headers, wait_seconds=wait_seconds)
        return raise_if_rejected(ExecutionResult.model_validate(answer))

    async def validate(self, request: ExecuteRequest) -> ValidationResult:
        body = request.model_dump(by_alias=True, exclude_defaults=True, mode="json")
        return ValidationResult.model_validate(await self._call("POST", "/validate", body=body))

    async def get(self, execution_id: str) -> ExecutionResult:
        return ExecutionResult.model_validate(await self._call("GET", f"/executions/{quote(execution_id)}"))

    async def list_page(
        self,
        limit: int = 50,
        offset: int = 0,
        continue_: str | None = None,
        language: str | None = None,
        phase: str | None = None,
        label_selector: str | None = None,
    ) -> ExecutionList:
        params = {
            "limit": limit,
            "offset": offset,
            "continue": continue_,
            "language": language,
            "phase": phase,
            "labelSelector": label_selector,
        }
        query = {key: str(value) for key, value in params.items() if value is not None}
        return ExecutionList.model_validate(await self._call("GET", "/executions", params=query))

    async def delete(self, execution_id: str) -> None:
        await self._call("DELETE", f"/executions/{quote(execution_id)}")

    async def languages(self) -> list[Language]:
        answer: list[dict[str, Any]] = await self._call("GET", "/languages")  # type: ignore[assignment]
        return [Language.model_validate(item) for item in answer]

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        wait_seconds: float = 0,
    ) -> dict[str, Any]:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        query = dict(params or {})
        if self._namespace:
            query["namespace"] = self._namespace
        timeout = aiohttp.ClientTimeout(sock_connect=10, sock_read=wait_seconds + 30)
        try:
            async with self._session.request(
                method,
                self._url + path,
                params=query,
                json=body,
                headers={**self._headers, **(headers or {})},
                timeout=timeout,
            ) as response:
                if response.status == 204:
                    return {}
                try:
                    answer = await response.json(content_type=None)
                except ValueError:
                    answer = {"detail": (await response.text())[:500]}
                if response.status >= 400:
                    raise _problem_error(response.status, answer)
                result: dict[str, Any] = answer
                return result
        except (TimeoutError, aiohttp.ClientError) as error:
            raise errors.Unavailable(f"the gateway at {self._url} did not answer: {error}") from error


def _problem_error(status: int, problem: Any) -> errors.CodeExecError:
    """An RFC 9457 problem document as the matching exception."""
    problem = problem if isinstance(problem, dict) else {}
    fields = [FieldError.model_validate(item) for item in problem.get("errors", [])]
    message = problem.get("detail") or problem.get("title") or f"HTTP {status}"
    return errors.from_status(status, message, errors=fields, reason=problem.get("reason"), id=problem.get("id"))
