"""e2e: a bounded fuzz run on the real cluster. A few hundred random and hostile Execution manifests (fixed
seed) go through `kubectl create` to the API server, the operator's admission webhook and the operator;
every one is refused with a message or ends in a terminal phase, with the outcome its case predicts, and
the operator never restarts.

The session's operator serves no webhook (no Service reaches a local process), so this test starts its own
operator (own_operator) with the webhook on, and registers a ValidatingWebhookConfiguration that sends the
API server (a process on this machine) to it at https://127.0.0.1:<port> for the first of its two
namespaces only. The second namespace gets the same hostile manifests without the webhook, as a cluster
whose webhook is off (or failurePolicy Ignore) would: there the operator must reject what the webhook
refuses, with the same reason."""

from __future__ import annotations

import base64
import json
import random
import string
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from codeexec import vocabulary
from codeexec.__main__ import RECURSION_LIMIT
from codeexec.admission import WEBHOOK_ID
from codeexec.models import MAX_CODE_BYTES, MAX_ENV_BYTES, MAX_INPUT_BYTES, MAX_STDIN_BYTES
from tests.e2e.executions import API_VERSION, OwnOperator, StartOperator, _free_port, wait_all_finished
from tests.e2e.kube import kubectl, kubectl_run

pytestmark = pytest.mark.e2e

SEED = 8
RUNNABLE = 20  # each needs a sandbox pod on the 2-core node; the rest are cheap refusals
HOSTILE = 140  # created in both namespaces
# Small sandboxes, so several run at once next to the other tests.
SMALL = {"cpu": "250m", "memory": "128Mi"}
SETTLE_TIMEOUT = 240


@dataclass(frozen=True)
class Refused:
    """The API server refuses the manifest before any webhook (schema, CEL rule, kubectl's own checks)."""


@dataclass(frozen=True)
class Invalid:
    """Within the schema, but the operator's planning rejects it with `reason`: the webhook refuses it;
    without the webhook the operator writes phase Rejected with that reason."""

    reason: str


@dataclass(frozen=True)
class Rejected:
    """Only the operator can tell (allowed domains are resolved when it accepts): phase Rejected."""

    reason: str


@dataclass(frozen=True)
class Runs:
    """A valid program: it runs and ends in `phase` with `reason` (and `stdout` when it succeeds)."""

    phase: str
    reason: str
    stdout: str | None = None


Expected = Refused | Invalid | Rejected | Runs


@dataclass(frozen=True)
class Case:
    name: str
    document: str  # JSON or YAML, as a user would write it
    expected: Expected
    validate: bool = True  # kubectl's own field validation; off: unknown fields are dropped by the server


def manifest(name: str, spec: Any, **top: Any) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "Execution", "metadata": {"name": name}, "spec": spec, **top}


def json_case(name: str, spec: Any, expected: Expected, validate: bool = True) -> Case:
    return Case(name, json.dumps(manifest(name, spec)), expected, validate)


def python(code: str, **fields: Any) -> dict[str, Any]:
    return {"language": "python", "code": code, "timeoutSeconds": 20, "resources": SMALL, **fields}


def word(rng: random.Random) -> str:
    """A language name no Runtime has."""
    return "lang-" + "".join(rng.choices(string.ascii_lowercase, k=rng.randint(1, 12)))


def nested(depth: int) -> str:
    """JSON text of a list nested `depth` levels deep (as text: Python's json cannot build it)."""
    return "[" * depth + "1" + "]" * depth


def runnable_cases(rng: random.Random) -> list[Case]:
    """Valid programs with known outcomes, a few with unknown fields the server drops."""
    cases = []
    for index in range(RUNNABLE):
        name = f"run-{index:02d}"
        number = rng.randint(1, 10**6)
        kind = index % 10
        if kind == 8:
            cases.append(json_case(name, python("raise SystemExit(3)"), Runs("Failed", vocabulary.NON_ZERO_EXIT)))
        elif kind == 9:
            cases.append(
                json_case(name, python("while True: pass", timeoutSeconds=2), Runs("TimedOut", vocabulary.TIMEOUT))
            )
        elif kind in (0, 1):
            code = "print(input['n'] * 2)"
            cases.append(
                json_case(name, python(code, input={"n": number}), Runs("Succeeded", "Completed", f"{number * 2}\n"))
            )
        elif kind == 2:
            code = "import sys; print(sys.stdin.read().upper(), end='')"
            text = "".join(rng.choices(string.ascii_lowercase + " \n", k=40))
            cases.append(json_case(name, python(code, stdin=text), Runs("Succeeded", "Completed", text.upper())))
        elif kind == 3:
            code = "import os, sys; print(os.environ['X'], *sys.argv[1:])"
            spec = python(code, env=[{"name": "X", "value": str(number)}], args=["a", "b c"])
            cases.append(json_case(name, spec, Runs("Succeeded", "Completed", f"{number} a b c\n")))
        elif kind == 4:
            # Pod-level fields are not in the schema: with validation off the API server drops them.
            spec = python(f"print({number})", image="busybox", privileged=True, nodeName="elsewhere")
            cases.append(json_case(name, spec, Runs("Succeeded", "Completed", f"{number}\n"), validate=False))
        else:
            cases.append(
                json_case(
                    name,
                    python(f"print(sum(range({number})))"),
                    Runs("Succeeded", "Completed", f"{sum(range(number))}\n"),
                )
            )
    return cases


# Allowed domains the schema's pattern refuses: wildcards, addresses, upper case, bad ports, no dot.
BAD_DOMAIN_SYNTAX = [
    "*.example.com",
    "10.0.0.1",
    "[::1]",
    "Example.COM",
    "a_b.com",
    "x.com:0",
    "x.com:65536",
    "localhost",
]
OK: dict[str, Any] = {"language": "python", "code": "print(1)"}
# Specs the API server refuses before any webhook: each maker draws its own variant.
SCHEMA_REFUSED: list[Callable[[random.Random], Any]] = [
    lambda rng: {"language": rng.choice([5, True, ["python"], {"a": 1}, ""]), "code": "x"},
    lambda rng: {"language": "python", "code": rng.choice([1, None, ["x"], {"x": 1}])},
    lambda rng: rng.choice([{"language": "python"}, {"code": "print(1)"}]),
    lambda rng: {**OK, "timeoutSeconds": rng.choice(["10", 1.5, 0, -rng.randint(1, 10**9), 3601, 2**40])},
    lambda rng: {**OK, "ttlSecondsAfterFinished": -rng.randint(1, 10**6)},
    lambda rng: {**OK, "resources": {"cpu": rng.choice(["lots", "1.5.5", "-1", "1e3", " 1", "0x10"])}},
    lambda rng: {**OK, "resources": {"memory": rng.choice(["1Ti", "1.5Gi", "-1Mi", "Mi", "1 Gi"])}},
    lambda rng: {**OK, "resources": rng.choice(["2", 2, ["cpu"]])},
    lambda rng: {**OK, "env": [{"name": rng.choice(["1A", "A-B", "", "CODEEXEC_TOKEN", "é"]), "value": "v"}]},
    lambda rng: {**OK, "env": [{"name": "A", "value": "1"}, {"name": "A", "value": rng.choice(["1", "2"])}]},
    lambda rng: {**OK, "env": [{"name": "A", "value": rng.randint(0, 9)}]},
    lambda rng: {**OK, "args": [f"a{i}" for i in range(rng.randint(65, 100))]},
    lambda rng: {**OK, "args": [rng.randint(0, 9)]},
    lambda rng: {**OK, "stdin": rng.choice([1, ["x"], {"x": "y"}])},
    lambda rng: {**OK, "code": "x" * (MAX_CODE_BYTES + rng.randint(1, 1000))},  # over the schema's maxLength
    lambda rng: {**OK, "network": {"allowedDomains": [rng.choice(BAD_DOMAIN_SYNTAX)]}},
    lambda rng: {**OK, "network": {"allowedDomains": [f"d{i}.example.com" for i in range(rng.randint(33, 40))]}},
    lambda rng: {**OK, "network": rng.choice(["all", ["example.com"], True])},
    lambda rng: {**OK, rng.choice(["image", "privileged", "hostPath"]): "x"},  # kubectl's strict validation
    lambda rng: rng.choice(["python", 42, ["python"], None]),  # spec not an object (None: no spec at all)
]
# Specs within the schema that planning rejects, with the reason.
PLANNING_REJECTED: list[tuple[Callable[[random.Random], Any], str]] = [
    (lambda rng: {**OK, "language": rng.choice(["cobol", "Python", "py2", word(rng)])}, vocabulary.UNKNOWN_LANGUAGE),
    (lambda rng: {**OK, "timeoutSeconds": rng.randint(601, 3600)}, vocabulary.TIMEOUT_TOO_LONG),
    (lambda rng: {**OK, "resources": {"cpu": rng.choice(["3", "2001m", "16", "2.5"])}}, vocabulary.RESOURCES_TOO_LARGE),
    (lambda rng: {**OK, "resources": {"memory": rng.choice(["1025Mi", "2Gi", "2G"])}}, vocabulary.RESOURCES_TOO_LARGE),
    (lambda rng: {**OK, "resources": {"cpu": rng.choice(["1m", "9m", "0", "0.001"])}}, vocabulary.INVALID_SPEC),
    (lambda rng: {**OK, "resources": {"memory": rng.choice(["1", "1Ki", "15Mi"])}}, vocabulary.INVALID_SPEC),
    # Under the schema's character limit, over the byte limit: only the operator counts bytes.
    (lambda rng: {**OK, "code": "é" * (MAX_CODE_BYTES // 2 + rng.randint(1, 5000))}, vocabulary.CODE_TOO_LARGE),
    (lambda rng: {**OK, "stdin": "€" * (MAX_STDIN_BYTES // 3 + rng.randint(1, 5000))}, vocabulary.INVALID_SPEC),
    (
        lambda rng: {**OK, "input": ["x" * 1000] * (MAX_INPUT_BYTES // 1000 + rng.randint(1, 20))},
        vocabulary.INVALID_SPEC,
    ),
    (
        lambda rng: {**OK, "env": [{"name": f"V{i}", "value": "v" * 4096} for i in range(MAX_ENV_BYTES // 4096 + 1)]},
        vocabulary.INVALID_SPEC,
    ),
    (lambda rng: {**OK, "queueTimeoutSeconds": rng.randint(3601, 86400)}, vocabulary.QUEUE_TIMEOUT_TOO_LONG),
]


def hostile_cases(rng: random.Random) -> list[Case]:
    """Wrong types, oversized fields, limits exceeded, hostile inputs and domains, YAML oddities, drawn at random."""
    cases: list[Case] = []
    for index in range(HOSTILE):
        name = f"bad-{index:03d}"
        kind = index % 8
        if kind in (0, 1, 2):
            spec = rng.choice(SCHEMA_REFUSED)(rng)
            top = {} if spec is None else {"spec": spec}
            document = {"apiVersion": API_VERSION, "kind": "Execution", "metadata": {"name": name}, **top}
            cases.append(Case(name, json.dumps(document), Refused()))
        elif kind in (3, 4, 5):
            make, reason = rng.choice(PLANNING_REJECTED)
            # Unknown fields, dropped by the server when kubectl does not validate, change nothing.
            extra = {"hostPath": "/", "runtimeClassName": "runc"} if index % 3 == 0 else {}
            cases.append(json_case(name, {**make(rng), **extra}, Invalid(reason), validate=not extra))
        elif kind == 6:
            cases.append(hostile_input_case(name, rng))
        else:
            cases.append(yaml_case(name, rng))
    return cases


def hostile_input_case(name: str, rng: random.Random) -> Case:
    """Input nested deeper than any parser likes (up to the API server's own limit of 10,000), or
    allowed domains the operator must not pin (they never resolve to a public address here)."""
    if rng.random() < 0.5:
        depth = rng.choice([101, 1000, 2000, 9000])
        document = (
            f'{{"apiVersion": "{API_VERSION}", "kind": "Execution", "metadata": {{"name": "{name}"}}, '
            f'"spec": {{"language": "python", "code": "print(1)", "input": {nested(depth)}}}}}'
        )
        return Case(name, document, Invalid(vocabulary.INVALID_SPEC))
    domain = rng.choice(
        ["metadata.google.internal", "kubernetes.default.svc", f"{name}.example.invalid", "x.invalid:8443"]
    )
    spec = {"language": "python", "code": "print(1)", "network": {"allowedDomains": [domain]}}
    return json_case(name, spec, Rejected(vocabulary.DOMAIN_UNRESOLVABLE))


def yaml_case(name: str, rng: random.Random) -> Case:
    """YAML as people write it, oddities included; sigs.k8s.io/yaml (YAML 1.1 types) decides what they mean."""
    head = f"apiVersion: {API_VERSION}\nkind: Execution\nmetadata:\n  name: {name}\nspec:\n"
    variants: list[tuple[str, Expected]] = [
        ("  language: python\n  code: yes\n", Refused()),  # a boolean
        ("  language: no\n  code: print(1)\n", Refused()),  # a boolean
        ("  language: python\n  code: print(1)\n  timeoutSeconds: .nan\n", Refused()),
        ("  language: python\n  code: print(1)\n  timeoutSeconds: .inf\n", Refused()),
        ("  language: python\n  language: cobol\n  code: print(1)\n", Refused()),  # duplicate key
        ("  language: python\n  code: [print(1)]\n", Refused()),
        ("  language: python\n  code: print(1)\n  timeoutSeconds: 0x300\n", Invalid(vocabulary.TIMEOUT_TOO_LONG)),
        (f"  language: &l {word(rng)}\n  code: *l\n", Invalid(vocabulary.UNKNOWN_LANGUAGE)),
        ("  language: cobol\n  code: |\n    \tprint('tab')\r\n    print(2)\n", Invalid(vocabulary.UNKNOWN_LANGUAGE)),
        (
            "  language: python\n  code: print(1)\n  input: {a: [1, {b: ~}], c: 2001-01-01}\n  timeoutSeconds: 9999\n",
            Refused(),
        ),
        ("  language: python\n  code: print(1)\n  resources: {memory: 1e9}\n", Refused()),
    ]
    body, expected = rng.choice(variants)
    return Case(name, head + body, expected)


def create(namespace: str, case: Case) -> subprocess.CompletedProcess[str]:
    flags = [] if case.validate else ["--validate=false"]
    return kubectl_run("create", *flags, "-n", namespace, "-f", "-", stdin=case.document, timeout=90)


@pytest.fixture
def deep_json() -> Iterator[None]:
    """This process reads the Executions back (json.loads): nested thousands of levels deep, they need the
    operator's recursion limit here too."""
    previous = sys.getrecursionlimit()
    sys.setrecursionlimit(RECURSION_LIMIT)
    yield
    sys.setrecursionlimit(previous)


@pytest.fixture
def webhooked(own_operator: StartOperator, tmp_path: Path) -> Iterator[OwnOperator]:
    """An operator serving its webhook on 127.0.0.1, and the webhook configuration that sends the API server
    there for the operator's first namespace only."""
    key, cert = tmp_path / "tls.key", tmp_path / "tls.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    port = _free_port()
    operator = own_operator(2, CODEEXEC_WEBHOOK_PORT=str(port), CODEEXEC_WEBHOOK_CERT_DIR=str(tmp_path))
    name = f"{operator.namespaces[0]}-fuzz"
    configuration = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [
            {
                "name": "executions.validate.codeexec.io",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": "Fail",
                "timeoutSeconds": 10,
                "rules": [
                    {
                        "apiGroups": ["codeexec.io"],
                        "apiVersions": ["v1alpha1"],
                        "resources": ["executions"],
                        "operations": ["CREATE"],
                        "scope": "Namespaced",
                    }
                ],
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": operator.namespaces[0]}},
                "clientConfig": {
                    "url": f"https://127.0.0.1:{port}/{WEBHOOK_ID}",
                    "caBundle": base64.b64encode(cert.read_bytes()).decode(),
                },
            }
        ],
    }
    kubectl("create", "-f", "-", stdin=json.dumps(configuration))
    try:
        yield operator
    finally:
        kubectl("delete", "validatingwebhookconfiguration", name, "--wait=false", check=False)


def test_hostile_manifests_are_refused_or_end_terminal_and_the_operator_survives(
    webhooked: OwnOperator, deep_json: None
) -> None:
    """Safeguards: the webhook's and the operator's validation (planning: types, sizes, limits, input depth),
    and the operator's robustness: it never crashes on anything the API server stores.

    Seen failing with a safeguard removed: without the operator's raised recursion limit
    (codeexec.__main__.RECURSION_LIMIT) the webhook answers 500 for inputs nested 1,000+ levels deep (no
    reason named) and, in the namespace without the webhook, the first such Execution stops the operator
    (Kopf's JSON parser raises RecursionError, its watch fails, the process exits); without the size check
    (validation._size_rejection) the CodeTooLarge and oversized stdin, input and env cases are admitted."""
    with_webhook, without_webhook = webhooked.namespaces
    pid = webhooked.process.pid
    log_start = webhooked.process.log_size()
    rng = random.Random(SEED)
    runnable, hostile = runnable_cases(rng), hostile_cases(rng)
    jobs = [(with_webhook, case) for case in runnable + hostile]
    jobs += [(without_webhook, case) for case in hostile]
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda job: create(*job), jobs))

    problems: list[str] = []
    created: dict[str, list[str]] = {with_webhook: [], without_webhook: []}
    for (namespace, case), result in zip(jobs, results, strict=True):
        webhook = namespace == with_webhook
        refusal_expected = isinstance(case.expected, Refused) or (webhook and isinstance(case.expected, Invalid))
        where = f"{namespace}/{case.name} ({case.expected})"
        if result.returncode == 0:
            created[namespace].append(case.name)
            if refusal_expected:
                problems.append(f"{where}: admitted, expected a refusal")
            continue
        message = result.stderr.strip()
        if not refusal_expected:
            problems.append(f"{where}: refused, expected it to be admitted: {message[:300]}")
        elif not message:
            problems.append(f"{where}: refused without a message")
        elif isinstance(case.expected, Invalid) and f"(reason {case.expected.reason})" not in message:
            problems.append(f"{where}: the webhook's refusal does not name the reason: {message[:300]}")
    print(f"{len(jobs)} manifests sent in {time.monotonic() - started:.0f}s")
    assert not problems, "\n".join(problems)

    cases = {case.name: case for case in runnable + hostile}
    for namespace, names in created.items():
        finished = wait_all_finished(namespace, names, timeout=SETTLE_TIMEOUT)
        for name, execution in finished.items():
            status = execution["status"]
            outcome = (status.get("phase"), status.get("reason"))
            expected = cases[name].expected
            if isinstance(expected, Runs):
                wanted: tuple[Any, ...] = (expected.phase, expected.reason)
            else:
                wanted = ("Rejected", getattr(expected, "reason", None))
            if outcome != wanted:
                problems.append(f"{namespace}/{name}: {outcome}, expected {wanted}: {status.get('message')}")
            elif not status.get("message") and outcome[0] != "Succeeded":
                problems.append(f"{namespace}/{name}: {outcome} without a message")
            if isinstance(expected, Runs) and expected.stdout is not None and status.get("stdout") != expected.stdout:
                problems.append(f"{namespace}/{name}: stdout {status.get('stdout')!r}, expected {expected.stdout!r}")
    print(f"all settled after {time.monotonic() - started:.0f}s")
    assert not problems, "\n".join(problems)

    assert webhooked.process.running and webhooked.process.pid == pid, "the operator restarted or exited"
    log = webhooked.process.log_since(log_start, max_lines=100_000)
    assert "Traceback" not in log, log[log.index("Traceback") - 2000 : log.index("Traceback") + 3000]
