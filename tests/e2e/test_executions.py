"""e2e: the operator, run as a local process, against the real cluster, gVisor and the sandbox images
(each case of /work/shared/SECURITY_CASES.md that concerns a single sandbox, forgery and bad input)."""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

import pytest

from tests.e2e.executions import (
    ExecutionWatch,
    OperatorProcess,
    PodWatch,
    apply,
    assert_usage,
    create_sandbox_as_operator,
    execution_manifest,
    get_execution,
    run,
    run_all,
    sandbox_objects,
    uid,
    wait_all_finished,
    wait_finished,
)
from tests.e2e.kube import kubectl, kubectl_run, wait_until
from tests.e2e.sandbox_facts import FACTS, assert_isolated, assert_sandbox_pod_spec

pytestmark = pytest.mark.e2e

RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
HELLO_SPEC: dict[str, Any] = {
    "input": {"name": "world", "numbers": [1, 2, 3]},
    "args": ["a", "b c"],
    "env": [{"name": "GREETING", "value": "hi"}],
    "stdin": "line one\nline two\n",
    "timeoutSeconds": 30,
}
HELLO_RESULT = {
    "greeting": "hello, world",
    "sum": 6,
    "argv": ["a", "b c"],
    "env": "hi",
    "stdin": "line one\nline two\n",
}
# Each program: "hello, world" on stdout, "to stderr" on stderr, HELLO_RESULT returned; then a
# program that prints, fails on stderr and exits with code 3.
PROGRAMS = {
    "python": (
        """import os, sys
print(f"hello, {input['name']}")
print("to stderr", file=sys.stderr)
return {"greeting": f"hello, {input['name']}", "sum": sum(input["numbers"]), "argv": sys.argv[1:],
        "env": os.environ["GREETING"], "stdin": sys.stdin.read()}
""",
        """import sys
print("partial output")
print("something went wrong", file=sys.stderr)
sys.exit(3)
""",
    ),
    "javascript": (
        """process.stdout.write(`hello, ${input.name}\\n`);
process.stderr.write("to stderr\\n");
return { greeting: `hello, ${input.name}`, sum: input.numbers.reduce((a, b) => a + b, 0),
         argv: process.argv.slice(2), env: process.env.GREETING, stdin: require("fs").readFileSync(0, "utf8") };
""",
        """process.stdout.write("partial output\\n");
process.stderr.write("something went wrong\\n");
process.exit(3);
""",
    ),
    "typescript": (
        """interface Input { name: string; numbers: number[] }
const data = input as Input;
const sum: number = data.numbers.reduce((a: number, b: number) => a + b, 0);
process.stdout.write(`hello, ${data.name}\\n`);
process.stderr.write("to stderr\\n");
return { greeting: `hello, ${data.name}`, sum, argv: process.argv.slice(2), env: process.env.GREETING,
         stdin: require("fs").readFileSync(0, "utf8") as string };
""",
        """const code: number = 3;
process.stdout.write("partial output\\n");
process.stderr.write("something went wrong\\n");
process.exit(code);
""",
    ),
}


def status_of(execution: dict[str, Any]) -> dict[str, Any]:
    status: dict[str, Any] = execution.get("status", {})
    return status


def seconds_between(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


@pytest.mark.parametrize("language", sorted(PROGRAMS))
def test_hello_and_failure_per_language(op_namespace: str, language: str) -> None:
    hello, failing = PROGRAMS[language]
    found = run_all(
        op_namespace,
        [
            execution_manifest("hello", language, hello, **HELLO_SPEC),
            execution_manifest("failing", language, failing, timeoutSeconds=30),
        ],
    )

    ok = status_of(found["hello"])
    assert (ok["phase"], ok["reason"], ok["exitCode"]) == ("Succeeded", "Completed", 0), ok.get("message")
    assert ok["stdout"] == "hello, world\n"
    assert ok["stderr"] == "to stderr\n"
    assert (ok["stdoutBytes"], ok["stdoutTruncated"], ok["stderrBytes"], ok["stderrTruncated"]) == (
        13,
        False,
        10,
        False,
    )
    assert ok["result"] == HELLO_RESULT
    assert ok["podName"].startswith("hello-")
    assert ok["observedGeneration"] == 1
    conditions = {c["type"]: (c["status"], c["reason"]) for c in ok["conditions"]}
    assert conditions == {"Accepted": ("True", "Accepted"), "Finished": ("True", "Completed")}
    assert 0 <= ok["durationMs"] < 10_000
    assert ok["startedAt"] <= ok["finishedAt"]
    assert_usage(ok)

    bad = status_of(found["failing"])
    assert (bad["phase"], bad["reason"], bad["exitCode"]) == ("Failed", "NonZeroExit", 3), bad.get("message")
    assert bad["stdout"] == "partial output\n"
    assert bad["stderr"] == "something went wrong\n"
    assert "result" not in bad
    assert "exited with code 3" in bad["message"]
    assert_usage(bad)


CONSOLE_PROGRAMS = {
    "python": (
        """console.log("log", 1)
console.info("info", "two words")
console.warn("warn")
console.error("error", [1, 2])
console.debug("debug")
""",
        "error [1, 2]",
    ),
    "javascript": (
        """console.log("log", 1);
console.info("info", "two words");
console.warn("warn");
console.error("error", [1, 2]);
console.debug("debug");
""",
        "error [ 1, 2 ]",
    ),
}


@pytest.mark.parametrize("language", sorted(CONSOLE_PROGRAMS))
def test_console_levels_become_structured_logs(op_namespace: str, language: str) -> None:
    code, error_message = CONSOLE_PROGRAMS[language]
    status = status_of(run(op_namespace, "console", language, code))

    assert status["phase"] == "Succeeded", status.get("message")
    entries = [(entry["level"], entry["message"]) for entry in status["logs"]]
    assert entries == [
        ("log", "log 1"),
        ("info", "info two words"),
        ("warn", "warn"),
        ("error", error_message),
        ("debug", "debug"),
    ]
    assert status["logsTruncated"] is False
    times = [entry["time"] for entry in status["logs"]]
    assert all(RFC3339_MS.match(time) for time in times), times
    assert times == sorted(times)
    assert status["stdout"] == "log 1\ninfo two words\ndebug\n"
    assert status["stderr"] == f"warn\n{error_message}\n"


TIMEOUT_SECONDS = 3
# The runner measures durationMs; it kills the process group at the deadline.
TIMEOUT_GRACE_MS = 1500


def test_timeouts_kill_infinite_loops_and_sigterm_ignorers(op_namespace: str) -> None:
    programs = {
        "busy-python": ("python", "while True:\n    pass\n"),
        "busy-javascript": ("javascript", "while (true) {}\n"),
        "ignores-sigterm": (
            "python",
            """import os, signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("started", flush=True)
if os.fork() == 0:
    os.setsid()  # a child in its own session, out of the program's process group
    while True:
        time.sleep(0.1)
while True:
    time.sleep(0.1)
""",
        ),
    }
    found = run_all(
        op_namespace,
        [
            execution_manifest(name, lang, code, timeoutSeconds=TIMEOUT_SECONDS)
            for name, (lang, code) in programs.items()
        ],
    )
    for name, execution in found.items():
        status = status_of(execution)
        assert (status["phase"], status["reason"], status["exitCode"]) == ("TimedOut", "Timeout", 124), (name, status)
        duration = status["durationMs"]
        assert TIMEOUT_SECONDS * 1000 <= duration <= TIMEOUT_SECONDS * 1000 + TIMEOUT_GRACE_MS, (name, duration)
        # The container's own clock (whole seconds) agrees: the pod did not outlive the timeout.
        assert seconds_between(status["startedAt"], status["finishedAt"]) <= TIMEOUT_SECONDS + 2, (name, status)
    assert status_of(found["ignores-sigterm"])["stdout"] == "started\n"


def test_memory_over_the_limit_is_oom_killed(op_namespace: str, operator: OperatorProcess) -> None:
    # Under gVisor the host kernel's memory cgroup kills the sandbox (the Sentry) as a whole: the runner
    # writes no report, and the kubelet reports the container terminated with reason OOMKilled.
    found = run_all(
        op_namespace,
        [
            execution_manifest(
                "hog-python",
                "python",
                "chunks = []\nfor _ in range(512):\n    chunks.append(bytearray(1024 * 1024))\nprint('survived')\n",
                resources={"memory": "64Mi"},
                timeoutSeconds=30,
            ),
            execution_manifest(
                "hog-javascript",
                "javascript",
                "const chunks = [];\nfor (let i = 0; i < 512; i++) chunks.push(Buffer.alloc(1024 * 1024, 1));\n"
                "console.log('survived');\n",
                resources={"memory": "64Mi"},
                timeoutSeconds=30,
            ),
        ],
    )
    for name, execution in found.items():
        status = status_of(execution)
        assert (status["phase"], status["reason"]) == ("Failed", "OOMKilled"), (name, status)
        assert status["message"] == "The sandbox exceeded its memory limit of 64Mi.", name
        assert "survived" not in status.get("stdout", "")
    assert operator.running


FORK_BOMB = """import os
while True:
    try:
        os.fork()
    except OSError:
        pass
"""


def test_fork_bomb_fails_within_its_timeout_and_harms_no_other_execution(op_namespace: str) -> None:
    # The pod's pids limit (kubelet podPidsLimit) and memory limit bound the bomb; whichever it hits
    # first, the Execution must end by its own timeout and a neighbour started beside it must succeed.
    found = run_all(
        op_namespace,
        [
            execution_manifest("fork-bomb", "python", FORK_BOMB, timeoutSeconds=TIMEOUT_SECONDS),
            execution_manifest("bystander", "python", "return 42\n"),
        ],
    )
    bomb, bystander = status_of(found["fork-bomb"]), status_of(found["bystander"])
    assert (bomb["phase"], bomb["reason"]) in {("Failed", "OOMKilled"), ("TimedOut", "Timeout")}, bomb
    assert seconds_between(bomb["startedAt"], bomb["finishedAt"]) <= TIMEOUT_SECONDS + 2, bomb
    assert (bystander["phase"], bystander.get("result")) == ("Succeeded", 42), bystander


DISK_FILL = """import errno
written = 0
try:
    with open("/tmp/fill", "wb") as f:
        while written < 1024 ** 3:
            f.write(b"x" * 1024 * 1024)
            f.flush()
            written += 1024 * 1024
except OSError as error:
    return {"errno": errno.errorcode[error.errno], "written": written}
return {"errno": None, "written": written}
"""


def test_filling_tmp_fails_with_enospc_at_its_size(op_namespace: str) -> None:
    status = status_of(run(op_namespace, "disk-fill", "python", DISK_FILL, resources={"memory": "256Mi"}))
    assert status["phase"] == "Succeeded", status
    assert status["result"]["errno"] == "ENOSPC", status
    assert status["result"]["written"] <= 64 * 1024 * 1024  # the operator's default tmp size


def test_huge_output_is_truncated_with_true_byte_counts(op_namespace: str) -> None:
    # 50 MB on stdout as one endless line, 10 MB on stderr in lines.
    code = """import sys
chunk = b"x" * (1024 * 1024)
for _ in range(50):
    sys.stdout.buffer.write(chunk)
line = b"e" * 1023 + b"\\n"
for _ in range(10 * 1024):
    sys.stderr.buffer.write(line)
"""
    execution = run(op_namespace, "flood", "python", code, timeoutSeconds=60)
    status = status_of(execution)

    assert status["phase"] == "Succeeded", status.get("message")
    assert (status["stdoutBytes"], status["stdoutTruncated"]) == (50 * 1024 * 1024, True)
    assert (status["stderrBytes"], status["stderrTruncated"]) == (10 * 1024 * 1024, True)
    assert status["stdout"] == "x" * 65536  # the operator's default cap per stream
    assert status["stderr"] == ("e" * 1023 + "\n") * 64
    # The whole stored object, managedFields and annotations included, stays far below etcd's limit.
    raw = kubectl("get", "--raw", f"/apis/codeexec.io/v1alpha1/namespaces/{op_namespace}/executions/flood")
    assert len(raw.encode()) < 300 * 1024


def test_invalid_utf8_output_is_stored_safely(op_namespace: str) -> None:
    code = """import sys
sys.stdout.buffer.write(b"ok \\xff\\xfe bad \\xc3\\x28 end\\n")
sys.stderr.buffer.write(b"\\x80err\\n")
return "\\ud800 lone surrogate"
"""
    status = status_of(run(op_namespace, "bad-bytes", "python", code))

    assert status["phase"] == "Succeeded", status.get("message")
    assert status["stdout"] == "ok \ufffd\ufffd bad \ufffd( end\n"
    assert status["stdoutBytes"] == 17  # bytes as written, not as stored
    assert status["stderr"] == "\ufffderr\n"
    assert status["result"] == "\ufffd lone surrogate"


def test_nulls_in_the_result_are_stored_as_returned(op_namespace: str) -> None:
    # A JSON merge patch would drop every null object member (`{"a": null}` became `{}`, seen in the demo).
    code = 'return {"first": None, "rows": [{"id": 1, "note": None}], "none": [None]}'
    status = status_of(run(op_namespace, "nulls", "python", code))

    assert status["phase"] == "Succeeded", status.get("message")
    assert status["result"] == {"first": None, "rows": [{"id": 1, "note": None}], "none": [None]}
    assert "queuePosition" not in status


FORGED_REPORT = (
    'codeexec-report/v1 {"exitCode":EXIT,"timedOut":false,"signal":null,"durationMs":1,'
    '"stdout":{"text":"forged","bytes":6,"truncated":false},"stderr":{"text":"","bytes":0,"truncated":false},'
    '"hasResult":true,"result":"forged","logs":[],"logsTruncated":false,"error":null}'
)


def test_forged_report_printed_by_the_code_is_ignored(op_namespace: str) -> None:
    # One forgery claims success against a real exit code 3; the other agrees with the real exit code,
    # so only taking the runner's final report line (not the forged earlier one) keeps it out.
    forged = {
        name: FORGED_REPORT.replace("EXIT", exit_code) for name, exit_code in (("claims-0", "0"), ("claims-3", "3"))
    }
    found = run_all(
        op_namespace,
        [
            execution_manifest(name, "python", f"import sys\nprint('real')\nprint('\\n' + {line!r})\nsys.exit(3)\n")
            for name, line in forged.items()
        ],
    )
    for name, execution in found.items():
        status = status_of(execution)
        assert (status["phase"], status["reason"], status["exitCode"]) == ("Failed", "NonZeroExit", 3), (name, status)
        assert status["stdout"] == f"real\n\n{forged[name]}\n", name
        assert "result" not in status, name


def test_sandbox_facts_and_pod_spec(op_namespace: str) -> None:
    with PodWatch(op_namespace) as pods:
        first = status_of(run(op_namespace, "facts", "python", FACTS, timeoutSeconds=20))
        # A second execution: the file the first left in /tmp must be gone (single-use pods).
        second = status_of(
            run(op_namespace, "after", "python", "import os\nreturn sorted(os.listdir('/tmp'))\n", timeoutSeconds=20)
        )
        created = pods.objects()

    assert first["phase"] == "Succeeded", (first.get("message"), first.get("stderr"))
    assert first["sandbox"] == "cold"
    assert_isolated(first["result"])

    assert second["phase"] == "Succeeded", second.get("message")
    assert second["result"] == []
    assert second["podName"] != first["podName"]

    assert len(created) == 2
    pod = next(p for p in created.values() if p["metadata"]["name"] == first["podName"])
    assert_sandbox_pod_spec(pod["spec"], timeout_seconds=20, warm=False)
    volumes = {volume["name"]: volume for volume in pod["spec"]["volumes"]}
    assert volumes["code"]["configMap"]["name"] == first["podName"]


BIG_CODE = "#" + "x" * (100 * 1024)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        pytest.param({"timeoutSeconds": -1}, "should be greater than or equal to 1", id="negative-timeout"),
        pytest.param({"timeoutSeconds": 100_000}, "should be less than or equal to 3600", id="huge-timeout"),
        pytest.param({"code": BIG_CODE}, "spec.code: Too long: may not be more than 102400", id="code-too-long"),
        pytest.param({"network": {"allowedDomains": ["*.example.com"]}}, "should match", id="domain-wildcard"),
        pytest.param({"network": {"allowedDomains": ["http://example.com"]}}, "should match", id="domain-url"),
        pytest.param({"network": {"allowedDomains": ["localhost"]}}, "should match", id="domain-no-dot"),
        pytest.param({"image": "evil:latest"}, 'unknown field "spec.image"', id="image"),
        pytest.param({"privileged": True}, 'unknown field "spec.privileged"', id="privileged"),
        pytest.param({"hostPath": "/"}, 'unknown field "spec.hostPath"', id="hostPath"),
        pytest.param({"runtimeClassName": "runc"}, 'unknown field "spec.runtimeClassName"', id="runtimeClass"),
        pytest.param({"nodeName": "codeexec-node"}, 'unknown field "spec.nodeName"', id="nodeName"),
        pytest.param({"serviceAccountName": "default"}, 'unknown field "spec.serviceAccountName"', id="serviceAccount"),
        pytest.param(
            {"resources": {"memory": "1Gi", "limits": {}}}, 'unknown field "spec.resources.limits"', id="limits"
        ),
        pytest.param({"env": [{"name": "CODEEXEC_CHANNEL_FD", "value": "1"}]}, "reserved", id="reserved-env"),
    ],
)
def test_bad_specs_are_refused_at_admission(op_namespace: str, spec: dict[str, Any], message: str) -> None:
    manifest = execution_manifest("bad", "python", "print(1)")
    manifest["spec"].update(spec)
    with PodWatch(op_namespace) as pods:
        refused = apply(op_namespace, manifest, check=False)
        assert refused.returncode != 0
        assert message in refused.stderr, refused.stderr
        assert not kubectl("get", "executions", "-n", op_namespace, "-o", "name")
        assert not kubectl(
            "get", "configmaps,networkpolicies", "-n", op_namespace, "-l", "app.kubernetes.io/managed-by"
        )
        pods.check_alive()
        assert not pods.objects()


def test_extra_fields_slipped_past_client_validation_are_pruned(op_namespace: str) -> None:
    # A client that skips strict field validation: the API server drops the unknown fields, so the
    # operator never sees them and the pod gets the Runtime's image and the gVisor class regardless.
    manifest = execution_manifest("sneaky", "python", "print(1)")
    manifest["spec"].update({"image": "evil:latest", "runtimeClassName": "runc", "privileged": True})
    with PodWatch(op_namespace) as pods:
        apply(op_namespace, manifest, validate=False)
        stored = get_execution(op_namespace, "sneaky")
        assert set(stored["spec"]) == {"language", "code"}
        status = status_of(wait_finished(op_namespace, "sneaky"))
        [pod] = pods.objects().values()
    assert status["phase"] == "Succeeded", status.get("message")
    assert pod["spec"]["containers"][0]["image"] == "localhost/codeexec/python:0.1.0"
    assert pod["spec"]["runtimeClassName"] == "gvisor"


def test_invalid_specs_are_rejected_by_the_operator_without_creating_anything(op_namespace: str) -> None:
    cases = {
        "unknown-language": ({"language": "cobol"}, "UnknownLanguage", 'spec.language "cobol" is not an installed'),
        # 60 Ki two-byte characters pass the schema's character limit, not the byte limit.
        "code-bytes": ({"code": "#" + "é" * (60 * 1024)}, "CodeTooLarge", "spec.code is 122881 bytes"),
        "timeout": ({"timeoutSeconds": 3600}, "TimeoutTooLong", "exceeds the maximum 600 for runtime python"),
        "memory": ({"resources": {"memory": "8Gi"}}, "ResourcesTooLarge", "spec.resources.memory 8Gi exceeds"),
    }
    manifests = []
    for name, (spec, _, _) in cases.items():
        manifest = execution_manifest(name, "python", "print(1)")
        manifest["spec"].update(spec)
        manifests.append(manifest)
    with PodWatch(op_namespace) as pods:
        found = run_all(op_namespace, manifests)
        pods.check_alive()
        assert not pods.objects()

    for name, (_, reason, message) in cases.items():
        status = status_of(found[name])
        assert (status["phase"], status["reason"]) == ("Rejected", reason), (name, status)
        assert message in status["message"], (name, status["message"])
        accepted = next(c for c in status["conditions"] if c["type"] == "Accepted")
        assert (accepted["status"], accepted["reason"]) == ("False", reason)
        assert "podName" not in status
        assert sandbox_objects(op_namespace, uid(found[name])) == []


def test_spec_cannot_be_edited_after_creation(op_namespace: str) -> None:
    before = run(op_namespace, "frozen", "python", "print('original')\n")
    assert status_of(before)["stdout"] == "original\n"

    patch = json.dumps({"spec": {"code": "print('edited')\n"}})
    patched = kubectl_run("patch", "execution", "frozen", "-n", op_namespace, "--type=merge", "-p", patch)
    assert patched.returncode != 0
    assert "spec is immutable; create a new Execution instead" in patched.stderr
    edited = execution_manifest("frozen", "python", "print('edited')\n", timeoutSeconds=5)
    refused = apply(op_namespace, edited, check=False)
    assert refused.returncode != 0
    assert "spec is immutable; create a new Execution instead" in refused.stderr

    after = get_execution(op_namespace, "frozen")
    assert after["spec"] == before["spec"]
    assert after["metadata"]["generation"] == 1
    assert status_of(after) == status_of(before)
    # Metadata stays editable: labels are how users organise their history.
    kubectl("label", "execution", "frozen", "-n", op_namespace, "team=e2e")


SLOW_PROGRAM = "import time\nprint('start', flush=True)\ntime.sleep(4)\nprint('done')\nreturn 42\n"


def test_operator_killed_mid_run_records_each_result_once(op_namespace: str, operator: OperatorProcess) -> None:
    names = [f"survivor-{index}" for index in range(4)]
    with PodWatch(op_namespace) as pods, ExecutionWatch(op_namespace) as watch:
        for name in names:
            apply(op_namespace, execution_manifest(name, "python", SLOW_PROGRAM, timeoutSeconds=30))
        # SIGKILL as soon as a first sandbox pod exists: the others are somewhere between
        # validation, child creation and the status patch.
        wait_until(pods.objects, 60, "a first sandbox pod")
        operator.kill()
        # Created while no operator runs at all.
        apply(op_namespace, execution_manifest("while-down", "python", SLOW_PROGRAM, timeoutSeconds=30))
        names.append("while-down")
        # The programs that had a pod finish while nobody watches; their outcome must still be recorded.
        wait_until(lambda: _all_terminated(pods), 60, "the started sandboxes to finish")
        operator.start()
        found = wait_all_finished(op_namespace, names)
        # Finished sandboxes are deleted right after their outcome is written: the last step.
        wait_until(lambda: not kubectl("get", "pods", "-n", op_namespace, "-o", "name"), 60, "sandbox cleanup")
        pods.check_alive()
        watch.check_alive()
        pod_uids = pods.pod_uids_by_execution()
        histories = {name: watch.statuses(name) for name in names}

    for name in names:
        status = status_of(found[name])
        assert (status["phase"], status["exitCode"]) == ("Succeeded", 0), (name, status)
        assert status["stdout"] == "start\ndone\n"
        assert status["result"] == 42
        assert len(pod_uids[uid(found[name])]) == 1, f"{name} had pods {pod_uids[uid(found[name])]}"
        phases = [history.get("phase") for history in histories[name]]
        terminal = [index for index, phase in enumerate(phases) if phase == "Succeeded"]
        # The outcome was written once and never rewritten: it is the last status the watch saw.
        assert terminal == [len(phases) - 1], (name, phases)
        assert _in_order(phases), (name, phases)
    assert len(pod_uids) == len(names)


def test_pod_created_just_before_a_crash_is_adopted_not_run_again(op_namespace: str, operator: OperatorProcess) -> None:
    # The narrowest window of a crash: the pod exists, its name is not recorded yet, and it finishes
    # while no operator runs. After the restart the resumed start_execution (working from the
    # listing's stale body) and the pod events race; the pod must not be created a second time.
    names = [f"orphan-{index}" for index in range(6)]
    operator.stop()
    try:
        with PodWatch(op_namespace) as pods:
            for name in names:
                apply(op_namespace, execution_manifest(name, "python", "print('ran')\nreturn 1\n", timeoutSeconds=30))
                create_sandbox_as_operator(op_namespace, name)
            wait_until(lambda: len(pods.objects()) == len(names) and _all_terminated(pods), 120, "the orphans to run")
            operator.start()
            found = wait_all_finished(op_namespace, names)
            wait_until(lambda: not kubectl("get", "pods", "-n", op_namespace, "-o", "name"), 60, "sandbox cleanup")
            pods.check_alive()
            pod_uids = pods.pod_uids_by_execution()
    finally:
        if not operator.running:
            operator.start()
    for name in names:
        status = status_of(found[name])
        assert (status["phase"], status["stdout"], status["result"]) == ("Succeeded", "ran\n", 1), (name, status)
        assert len(pod_uids[uid(found[name])]) == 1, f"{name} ran in pods {pod_uids[uid(found[name])]}"


def _all_terminated(pods: PodWatch) -> bool:
    latest = [pods.latest(pod["metadata"]["name"]) for pod in pods.objects().values()]
    return all(
        pod is not None
        and any("terminated" in s.get("state", {}) for s in pod.get("status", {}).get("containerStatuses") or [])
        for pod in latest
    )


def _in_order(phases: list[str | None]) -> bool:
    order = [None, "Pending", "Running", "Succeeded"]
    ranks = [order.index(phase) for phase in phases]
    return ranks == sorted(ranks)


def test_burst_of_twenty_all_succeed_with_one_pod_each(op_namespace: str) -> None:
    count = 20
    manifests = [
        execution_manifest(f"burst-{index}", "python", f"print({index})\nreturn {index}\n", timeoutSeconds=30)
        for index in range(count)
    ]
    with PodWatch(op_namespace) as pods:
        found = run_all(op_namespace, manifests, timeout=300)
        pods.check_alive()
        pod_uids = pods.pod_uids_by_execution()

    for index in range(count):
        execution = found[f"burst-{index}"]
        status = status_of(execution)
        assert (status["phase"], status["result"], status["stdout"]) == ("Succeeded", index, f"{index}\n"), status
        assert len(pod_uids.get(uid(execution), ())) == 1
    assert len(pod_uids) == count
