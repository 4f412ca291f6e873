"""The broker's settings, from CODEEXEC_BROKER_* variables (and the token key file the operator shares).

Not in codeexec/config.py: that is the operator's configuration, from which the chart's `config:` values, their
schema and the operator Deployment's environment are generated; the broker is another process, deployed by its
own template, and these settings are not the operator's."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from codeexec.config import OperatorConfig, variable_name

DATA_DIR = "CODEEXEC_BROKER_DATA_DIR"
API_TOKEN_FILE = "CODEEXEC_BROKER_API_TOKEN_FILE"
PORT = "CODEEXEC_BROKER_PORT"
METRICS_PORT = "CODEEXEC_BROKER_METRICS_PORT"
MAX_BODY_BYTES = "CODEEXEC_BROKER_MAX_BODY_BYTES"
# Shared with the operator, which mints the tokens this key checks.
TOKEN_KEY_FILE = variable_name("binding_token_key_file")


@dataclass(frozen=True)
class BrokerConfig:
    data_dir: str = "/var/lib/codeexec-broker"
    token_key_file: str = OperatorConfig.model_fields["binding_token_key_file"].default
    # The pod's projected ServiceAccount token (the chart's); absent (run outside a cluster): the kubeconfig.
    api_token_file: str = "/var/run/secrets/codeexec/broker/token"
    port: int = 8080
    metrics_port: int = 9090
    # A call's JSON body: its SQL (at most 256 KiB) and parameters.
    max_body_bytes: int = 1024 * 1024

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> BrokerConfig:
        env = os.environ if environ is None else environ
        defaults = cls()
        return cls(
            data_dir=env.get(DATA_DIR, defaults.data_dir),
            token_key_file=env.get(TOKEN_KEY_FILE, defaults.token_key_file),
            api_token_file=env.get(API_TOKEN_FILE, defaults.api_token_file),
            port=int(env.get(PORT, defaults.port)),
            metrics_port=int(env.get(METRICS_PORT, defaults.metrics_port)),
            max_body_bytes=int(env.get(MAX_BODY_BYTES, defaults.max_body_bytes)),
        )
