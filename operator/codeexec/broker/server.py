"""`codeexec broker`: the broker process, its settings from the environment (config.py), the sandbox API on one
port and /metrics on another."""

from __future__ import annotations

import logging
from pathlib import Path

import aiohttp
import prometheus_client
import uvicorn

from codeexec import bindingtoken
from codeexec.broker.app import BrokerSettings, create_app
from codeexec.broker.config import BrokerConfig
from codeexec.broker.engine import Engine
from codeexec.broker.kube import Kube, KubeClient
from codeexec.broker.postgres import PostgresEngine
from codeexec.broker.sqlite import SqliteEngine


def serve() -> None:
    config = BrokerConfig.from_env()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Read at start: a broker without its key cannot check a single call, so it does not start.
    key = bindingtoken.read_key(config.token_key_file)

    def connect_kube(session: aiohttp.ClientSession) -> Kube:
        return KubeClient.connect(session, config.api_token_file)

    def make_engines(kube: Kube) -> dict[str, Engine]:
        return {"sqlite": SqliteEngine(Path(config.data_dir)), "postgres": PostgresEngine(kube)}

    settings = BrokerSettings(
        token_key=key,
        connect_kube=connect_kube,
        make_engines=make_engines,
        max_body_bytes=config.max_body_bytes,
    )
    prometheus_client.start_http_server(config.metrics_port)
    uvicorn.run(
        create_app(settings),
        host="0.0.0.0",
        port=config.port,
        http="h11",
        timeout_keep_alive=75,  # longer than clients keep idle connections (see the gateway's)
        log_level="info",
        access_log=False,
    )
