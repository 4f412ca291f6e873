"""The broker's Prometheus metrics (served on their own port, which sandboxes cannot reach)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

LABELS = ("namespace", "binding", "engine")

CALLS = Counter("codeexec_broker_calls_total", "Calls answered, refused ones too.", LABELS)
ERRORS = Counter("codeexec_broker_errors_total", "Calls that failed (not refused), by error code.", (*LABELS, "code"))
REFUSED = Counter("codeexec_broker_refused_total", "Calls refused (401, 403), by error code.", (*LABELS, "code"))
ROWS = Counter("codeexec_broker_rows_total", "Rows read (returned) and written.", (*LABELS, "direction"))
TOKENS = Counter(
    "codeexec_broker_tokens_total", "ai: tokens the model endpoint counted (prompt and completion).", (*LABELS, "model")
)
DURATION = Histogram(
    "codeexec_broker_call_duration_seconds",
    "Time to answer a call, the access check included.",
    LABELS,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
