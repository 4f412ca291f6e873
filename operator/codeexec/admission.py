"""The validating admission webhook: which new Executions to refuse (the checks that would otherwise
end in phase Rejected), the handler's logic, and the HTTPS server Kopf answers the API server with."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import kopf

from codeexec.api import ApiError, ClusterFacts
from codeexec.config import OperatorConfig
from codeexec.models import RuntimeSpec
from codeexec.validation import Rejection, parse_runtimes, plan_execution

# Handler id = URL path of the webhook: the chart's ValidatingWebhookConfiguration calls /<id>.
WEBHOOK_ID = "validate-execution"
CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"


def validate(spec: Mapping[str, Any], facts: ClusterFacts, config: OperatorConfig, warnings: list[str]) -> None:
    """Refuses (kopf.AdmissionError) a new Execution that the lifecycle would reject, with the same
    message; the operator still checks what gets in."""
    try:
        runtimes = parse_runtimes(facts.list_runtimes())
    except ApiError as error:
        # Admitted: the operator validates it anyway, so an API hiccup must not block users.
        warnings.append(f"not validated against the installed Runtimes ({error}); the operator will")
        return
    why = refusal(spec, runtimes, config)
    if why is not None:
        raise kopf.AdmissionError(why, code=422)


def refusal(raw_spec: Mapping[str, Any], runtimes: Mapping[str, RuntimeSpec], config: OperatorConfig) -> str | None:
    """Why the API server should refuse this spec, naming the field and the stable reason; None: admit.
    A missing RuntimeClass is the cluster's problem, not the spec's: it is left to the operator. So are the
    SandboxBindings spec.bindings names: the namespace's state, which the operator reads when it admits."""
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
