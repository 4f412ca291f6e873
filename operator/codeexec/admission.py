"""The validating admission webhook: which new Executions to refuse (the checks that would otherwise
end in phase Rejected, without I/O) and the HTTPS server Kopf answers the API server with."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import kopf

from codeexec.config import OperatorConfig
from codeexec.models import RuntimeSpec
from codeexec.validation import Rejection, plan_execution

# Handler id = URL path of the webhook: the chart's ValidatingWebhookConfiguration calls /<id>.
WEBHOOK_ID = "validate-execution"
CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"


def refusal(raw_spec: Mapping[str, Any], runtimes: Mapping[str, RuntimeSpec], config: OperatorConfig) -> str | None:
    """Why the API server should refuse this spec, naming the field and the stable reason; None: admit.
    A missing RuntimeClass is the cluster's problem, not the spec's: it is left to the operator."""
    plan = plan_execution(raw_spec, runtimes, config, runtime_class_exists=True)
    if isinstance(plan, Rejection):
        return f"{plan.message} (reason {plan.reason})"
    return None


def webhook_server(config: OperatorConfig) -> kopf.WebhookServer:
    """HTTPS on all interfaces with the mounted serving certificate; Kopf re-reads the files when
    they change. The CA bundle is the chart's business (it owns the webhook configuration)."""
    cert_dir = Path(config.webhook_cert_dir)
    return kopf.WebhookServer(
        port=config.webhook_port,
        certfile=cert_dir / CERT_FILE,
        pkeyfile=cert_dir / KEY_FILE,
    )
