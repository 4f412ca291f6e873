"""AsyncClient and Client: the service's RPC methods in Python over either transport."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Coroutine, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar

import aiohttp

from codeexec.client.kubeapi import Connection, KubeApi
from codeexec.client.shapes import ExecuteRequest, ExecutionList, ExecutionResult, Language, ValidationResult
from codeexec.client.transports import DEFAULT_WAIT_SECONDS, GatewayTransport, KubeTransport, OnUpdate, Transport

T = TypeVar("T")


class AsyncClient:
    """Runs code as Executions. Without `gateway_url`: through the Kubernetes API with the kubeconfig (or the
    pod's service account), in its context's namespace unless `namespace` is given. With `gateway_url` and
    `token` (e.g. `kubectl create token NAME`): through the HTTP gateway, which acts as that token's user."""

    def __init__(
        self,
        *,
        namespace: str | None = None,
        gateway_url: str | None = None,
        token: str | None = None,
        kubeconfig: str | None = None,
        context: str | None = None,
        transport: Transport | None = None,
    ) -> None:
        self._transport: Transport | None = transport
        self._settings = (namespace, gateway_url, token, kubeconfig, context)

    def _connect(self) -> Transport:
        # Lazily: aiohttp sessions belong to the running event loop.
        if self._transport is None:
            namespace, gateway_url, token, kubeconfig, context = self._settings
            if gateway_url:
                if not token:
                    raise ValueError("a gateway needs a token (kubectl create token SERVICE_ACCOUNT)")
                self._transport = GatewayTransport(gateway_url, token, namespace)
            else:
                connection = Connection.load(kubeconfig, context)
                if namespace:
                    connection = dataclasses.replace(connection, namespace=namespace)
                session = aiohttp.ClientSession()
                self._transport = KubeTransport(KubeApi(session, connection), session)
        return self._transport

    async def execute_code(
        self,
        code: str,
        language: str,
        context: Any = None,
        config: Mapping[str, Any] | None = None,
        *,
        wait: bool = True,
        wait_seconds: float = DEFAULT_WAIT_SECONDS,
        on_update: OnUpdate | None = None,
    ) -> ExecutionResult:
        """Runs `code`; `context` is the code's `input`; `config` any other field of the request (camelCase or
        snake_case: timeout_seconds, resources, allowed_domains, env, args, stdin, name, labels, ...).
        With `wait` (default) the finished Execution, else the one just created. `on_update` sees each version
        while it waits (over the Kubernetes API; the gateway answers once)."""
        request = ExecuteRequest.model_validate(
            {**(config or {}), "code": code, "language": language, "input": context, "wait": wait}
        )
        return await self._connect().execute(request, wait_seconds, on_update)

    async def validate_code(
        self, code: str, language: str, config: Mapping[str, Any] | None = None
    ) -> ValidationResult:
        """Checks the request without running anything."""
        request = ExecuteRequest.model_validate({**(config or {}), "code": code, "language": language})
        return await self._connect().validate(request)

    async def get_execution(self, execution_id: str) -> ExecutionResult:
        return await self._connect().get(execution_id)

    async def list_executions(self, limit: int = 50, offset: int = 0, **filters: Any) -> ExecutionList:
        """Newest first; filters: continue_, language, phase, label_selector."""
        return await self._connect().list_page(limit, offset, **filters)

    async def delete_execution(self, execution_id: str) -> None:
        await self._connect().delete(execution_id)

    async def get_supported_languages(self) -> list[Language]:
        return await self._connect().languages()

    async def is_supported_language(self, language: str) -> bool:
        """True for a language's name or one of its aliases."""
        return any(language in (lang.name, *lang.aliases) for lang in await self.get_supported_languages())

    async def close(self) -> None:
        if self._transport is not None:
            await self._transport.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class Client:
    """The same methods, blocking: each call runs the AsyncClient on this client's own event loop (so not from
    inside a running loop: there, use AsyncClient)."""

    def __init__(self, **settings: Any) -> None:
        self._runner = asyncio.Runner()
        self._async = AsyncClient(**settings)

    def _run(self, call: Coroutine[Any, Any, T]) -> T:
        return self._runner.run(call)

    def execute_code(
        self,
        code: str,
        language: str,
        context: Any = None,
        config: Mapping[str, Any] | None = None,
        *,
        wait: bool = True,
        wait_seconds: float = DEFAULT_WAIT_SECONDS,
        on_update: OnUpdate | None = None,
    ) -> ExecutionResult:
        call = self._async.execute_code(
            code, language, context, config, wait=wait, wait_seconds=wait_seconds, on_update=on_update
        )
        return self._run(call)

    def validate_code(self, code: str, language: str, config: Mapping[str, Any] | None = None) -> ValidationResult:
        return self._run(self._async.validate_code(code, language, config))

    def get_execution(self, execution_id: str) -> ExecutionResult:
        return self._run(self._async.get_execution(execution_id))

    def list_executions(self, limit: int = 50, offset: int = 0, **filters: Any) -> ExecutionList:
        return self._run(self._async.list_executions(limit, offset, **filters))

    def delete_execution(self, execution_id: str) -> None:
        self._run(self._async.delete_execution(execution_id))

    def get_supported_languages(self) -> list[Language]:
        return self._run(self._async.get_supported_languages())

    def is_supported_language(self, language: str) -> bool:
        return self._run(self._async.is_supported_language(language))

    def close(self) -> None:
        self._run(self._async.close())
        self._runner.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
