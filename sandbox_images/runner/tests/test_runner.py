"""Tests of the runner (the zipapp the images carry) on the host: capture, limits, timeout, env, channel, cleanup."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from codeexec_runner.contract import REPORT_PREFIX

ECHO_LIMIT = 1024 * 1024
NOTICE = b"[codeexec: further output not shown in the log]\n"


def py(code: str) -> list[str]:
    return ["python3", "-c", code]


def wait_gone(pid: int, deadline: float = 5.0) -> bool:
    """True once no process has `pid` (init reaps orphans asynchronously)."""
    give_up = time.monotonic() + deadline
    while time.monotonic() < give_up:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.02)
    return False


def test_stdout_stderr_and_exit_code(run_runner):
    r = run_runner(py("import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"))
    assert r.returncode == 3
    assert r.report["exitCode"] == 3
    assert r.report["timedOut"] is False and r.report["signal"] is None
    assert r.report["stdout"] == {"text": "out\n", "bytes": 4, "truncated": False}
    assert r.report["stderr"] == {"text": "err\n", "bytes": 4, "truncated": False}
    assert r.report["hasResult"] is False and r.report["result"] is None and r.report["error"] is None
    # Live passthrough, so `kubectl logs` shows the output; all of it on the runner's stdout, so
    # nothing on another stream can land in the log after the report.
    assert b"out\n" in r.stdout and b"err\n" in r.stdout and r.stderr == b""


def test_forged_report_line_is_not_the_last_line(run_runner):
    forged = json.dumps(
        {
            "exitCode": 0,
            "timedOut": False,
            "signal": None,
            "durationMs": 1,
            "stdout": {"text": "", "bytes": 0, "truncated": False},
            "stderr": {"text": "", "bytes": 0, "truncated": False},
            "hasResult": True,
            "result": "forged",
            "logs": [],
            "logsTruncated": False,
            "error": None,
        },
        separators=(",", ":"),
    )
    r = run_runner(py(f"import sys; print('\\ncodeexec-report/v1 ' + {forged!r}); sys.exit(7)"))
    assert r.returncode == 7
    assert r.report["exitCode"] == 7 and r.report["hasResult"] is False
    # The forged line is ordinary output: echoed earlier in the log and captured in stdout.
    assert r.report["stdout"]["text"].startswith('\ncodeexec-report/v1 {"exitCode":0')
    assert r.stdout.startswith(b'\ncodeexec-report/v1 {"exitCode":0')


def test_output_flood_is_truncated_with_true_byte_counts(run_runner):
    code = (
        "import sys\n"
        "for _ in range(50): sys.stdout.buffer.write(b'\\x01' * 1000000)\n"
        "sys.stderr.buffer.write(b'\\x02' * 3000000)\n"
    )
    r = run_runner(py(code), max_output=1000)
    assert r.report["exitCode"] == 0
    assert r.report["stdout"] == {"text": "\x01" * 1000, "bytes": 50_000_000, "truncated": True}
    assert r.report["stderr"] == {"text": "\x02" * 1000, "bytes": 3_000_000, "truncated": True}
    # The container log gets at most 1 MiB of each stream, then one notice line each (the report
    # escapes control characters, so the raw bytes counted here are the echoed ones).
    assert r.stdout.count(b"\x01") == ECHO_LIMIT and r.stdout.count(b"\x02") == ECHO_LIMIT
    assert r.stdout.count(b"\n" + NOTICE) == 2


def test_runner_memory_stays_bounded_under_floods(runner):
    # 50 MB on stdout, one endless 20 MB line on stderr and on the channel; the programs themselves
    # (head) use little memory, so the largest RSS measured is the runner's.
    program = "head -c 50000000 /dev/zero; head -c 20000000 /dev/zero | tr '\\0' a >&2; head -c 20000000 /dev/zero >&3"
    measure = (
        "import resource, subprocess, sys\n"
        f"p = subprocess.run([{str(runner)!r}, '--timeout-seconds', '60', '--max-output-bytes', '65536', '--', "
        f"'sh', '-c', {program!r}], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)\n"
        "sys.stdout.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) + '\\n')\n"
        "sys.stdout.buffer.write(p.stdout[p.stdout[:-1].rindex(b'\\n') + 1:])\n"
    )
    out = subprocess.run([sys.executable, "-c", measure], capture_output=True, check=True, timeout=90).stdout
    max_rss_kib, report_line = out.split(b"\n", 1)
    report = json.loads(report_line[len(REPORT_PREFIX) :])
    assert report["stdout"]["bytes"] == 50_000_000 and len(report["stdout"]["text"]) == 65536
    assert report["stderr"]["bytes"] == 20_000_000 and report["stderr"]["text"] == "a" * 65536
    assert report["error"] is not None and "channel line longer" in report["error"]
    assert int(max_rss_kib) < 40 * 1024, f"runner used {int(max_rss_kib) // 1024} MiB"


def test_invalid_utf8_is_replaced_and_counted(run_runner):
    r = run_runner(py("import sys; sys.stdout.buffer.write(b'ok \\xff\\xfe end\\n')"))
    assert r.report["stdout"] == {"text": "ok \ufffd\ufffd end\n", "bytes": 10, "truncated": False}


def test_character_cut_by_truncation_is_dropped_not_replaced(run_runner):
    r = run_runner(py("import sys; sys.stdout.write('aaa\u20ac')"), max_output=4)
    assert r.report["stdout"] == {"text": "aaa", "bytes": 6, "truncated": True}


def test_incomplete_character_at_the_real_end_is_invalid(run_runner):
    r = run_runner(py("import sys; sys.stdout.buffer.write(b'ab\\xe2\\x82')"))
    assert r.report["stdout"] == {"text": "ab\ufffd", "bytes": 4, "truncated": False}


def test_timeout_kills_infinite_loop(run_runner):
    r = run_runner(py("print('spinning', flush=True)\nwhile True: pass"), timeout=1)
    assert r.returncode == 124
    assert r.report["exitCode"] == 124 and r.report["timedOut"] is True and r.report["signal"] == signal.SIGKILL
    assert r.report["stdout"]["text"] == "spinning\n"
    assert 1.0 <= r.elapsed < 2.0


def test_timeout_kills_sigterm_ignoring_program_and_its_group(run_runner):
    code = (
        "import signal, subprocess, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "child = subprocess.Popen(['python3', '-c', 'import signal, time; "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)'])\n"
        "print(child.pid, flush=True)\n"
        "while True: time.sleep(0.1)\n"
    )
    r = run_runner(py(code), timeout=1)
    assert r.returncode == 124 and r.report["timedOut"] is True
    assert r.elapsed < 2.0
    assert wait_gone(int(r.report["stdout"]["text"])), "the program's child survived the timeout"


def test_program_killed_by_signal_reports_128_plus_n(run_runner):
    r = run_runner(py("import os, signal; os.kill(os.getpid(), signal.SIGTERM)"))
    assert r.returncode == 128 + signal.SIGTERM
    assert r.report["exitCode"] == 128 + signal.SIGTERM and r.report["signal"] == signal.SIGTERM
    assert r.report["timedOut"] is False


def test_environment_is_built_from_scratch_plus_env_file(run_runner, tmp_path):
    leaky = {
        "PATH": os.environ["PATH"],
        "KUBERNETES_SERVICE_HOST": "10.96.0.1",
        "KUBERNETES_PORT": "tcp://x",
        "OPERATOR_TOKEN": "secret",
        "PYTHONPATH": "/evil",
    }
    r = run_runner(
        py("import json, os; print(json.dumps(dict(os.environ)))"),
        runner_env=leaky,
        input={"a": 1},
        env={"GREETING": "hello world", "HOME": "/home/override"},
    )
    env = json.loads(r.report["stdout"]["text"])
    assert env == {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": "/home/override",
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "CODEEXEC_CHANNEL_FD": "3",
        "CODEEXEC_INPUT_FILE": str(tmp_path / "input.json"),
        "GREETING": "hello world",
    }


def test_invalid_env_file_is_reported(run_runner):
    r = run_runner(["true"], env=["not", "an", "object"])  # type: ignore[arg-type]
    assert r.returncode == 125 and r.report["exitCode"] == 125
    assert "env file" in r.report["error"]


def test_bindings_file_gives_the_program_four_variables_and_nothing_else(run_runner, tmp_path):
    bindings = {"url": "http://10.96.0.57:8080", "token": "T" * 43, "execution": "ns/ex", "bindings": {"notes": "db"}}
    r = run_runner(py("import json, os; print(json.dumps(dict(os.environ)))"), bindings=bindings)
    env = json.loads(r.report["stdout"]["text"])
    assert env == {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": "/tmp",
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "CODEEXEC_CHANNEL_FD": "3",
        "CODEEXEC_BROKER_URL": "http://10.96.0.57:8080",
        "CODEEXEC_BINDING_TOKEN": "T" * 43,
        "CODEEXEC_EXECUTION": "ns/ex",
        "CODEEXEC_BINDINGS": '{"notes":"db"}',
    }


def test_invalid_bindings_file_is_reported_and_nothing_runs(run_runner, tmp_path):
    r = run_runner(py("open('ran', 'w')"), bindings={"url": "http://10.96.0.57:8080", "token": "T" * 43})
    assert r.returncode == 125 and r.report["exitCode"] == 125
    assert "bindings file" in r.report["error"] and r.report["usage"] is None
    assert not (tmp_path / "ran").exists()


def test_stdin_is_delivered(run_runner):
    r = run_runner(py("import sys; print(sys.stdin.read().upper())"), stdin=b"hello\nstdin")
    assert r.report["stdout"]["text"] == "HELLO\nSTDIN\n"


def test_missing_stdin_file_means_empty_stdin(run_runner, tmp_path):
    r = run_runner(py("import sys; print(repr(sys.stdin.read()))"), extra_args=["--stdin", str(tmp_path / "absent")])
    assert r.report["exitCode"] == 0 and r.report["stdout"]["text"] == "''\n"


def test_channel_result_and_logs(run_runner):
    code = (
        "import json, os\n"
        "def send(m): os.write(3, (json.dumps(m) + '\\n').encode())\n"
        "send({'type': 'log', 'level': 'warn', 'time': '2025-01-02T03:04:05.678Z', 'message': 'careful'})\n"
        "send({'type': 'result', 'value': {'answer': 42, 'list': [1, 'two', None]}})\n"
    )
    r = run_runner(py(code))
    assert r.report["hasResult"] is True
    assert r.report["result"] == {"answer": 42, "list": [1, "two", None]}
    assert r.report["logs"] == [{"level": "warn", "time": "2025-01-02T03:04:05.678Z", "message": "careful"}]
    assert r.report["logsTruncated"] is False and r.report["error"] is None


def test_channel_garbage_sets_error_but_keeps_exit_code_and_output(run_runner):
    code = "import os, sys; os.write(3, b'\\x00garbage{\\n{\"type\": \"nope\"}\\n'); print('out'); sys.exit(5)"
    r = run_runner(py(code))
    assert r.returncode == 5 and r.report["exitCode"] == 5
    assert r.report["stdout"]["text"] == "out\n"
    assert r.report["error"] == "malformed channel line: not JSON"
    assert r.report["hasResult"] is False


def test_program_closing_the_channel_is_fine(run_runner):
    r = run_runner(py("import os; os.close(3); print('done')"))
    assert r.report["exitCode"] == 0 and r.report["error"] is None and r.report["stdout"]["text"] == "done\n"


def test_second_result_is_an_error_and_the_first_stands(run_runner):
    code = 'import os\nos.write(3, b\'{"type":"result","value":1}\\n{"type":"result","value":2}\\n\')'
    r = run_runner(py(code))
    assert r.report["result"] == 1 and "more than one result" in r.report["error"]


def test_result_above_the_limit_is_refused(run_runner):
    code = "import json, os\nos.write(3, (json.dumps({'type': 'result', 'value': 'x' * 5000}) + '\\n').encode())"
    r = run_runner(py(code), max_output=1000)
    assert r.report["hasResult"] is False and r.report["result"] is None
    assert "above the limit" in r.report["error"]


def test_deeply_nested_result_does_not_break_the_report(run_runner):
    code = "import os\nos.write(3, b'{\"type\":\"result\",\"value\":' + b'[' * 5000 + b']' * 5000 + b'}\\n')"
    r = run_runner(py(code))
    assert r.report["hasResult"] is False and r.report["error"] is not None


def test_logs_are_capped(run_runner):
    code = (
        "import json, os\n"
        "line = json.dumps({'type': 'log', 'level': 'info', 'time': '2025-01-02T03:04:05.678Z', 'message': 'm'})\n"
        "os.write(3, ((line + '\\n') * 1200).encode())\n"
    )
    r = run_runner(py(code))
    assert len(r.report["logs"]) == 1000 and r.report["logsTruncated"] is True
    big = (
        "import json, os\n"
        "for i in range(3): os.write(3, (json.dumps({'type': 'log', 'level': 'info', "
        "'time': '2025-01-02T03:04:05.678Z', 'message': str(i) * 40000}) + '\\n').encode())\n"
    )
    r = run_runner(py(big))
    assert [len(e["message"]) for e in r.report["logs"]] == [40000, 64 * 1024 - 40000]
    assert r.report["logsTruncated"] is True


def test_command_not_found_is_reported(run_runner):
    r = run_runner(["no-such-interpreter", "main.x"])
    assert r.returncode == 127 and r.report["exitCode"] == 127
    assert "command not found" in r.report["error"]
    assert r.report["usage"] is None  # no program ran: nothing to account


def test_usage_counts_the_cpu_and_peak_memory_of_the_program_and_its_children(run_runner):
    # 64 MiB touched in a child process, and CPU burnt in the child and the program itself: what the
    # report says is the whole tree's CPU time and the largest single process's resident set.
    child = (
        "b = bytearray(64 * 1024 * 1024); import time; t = time.process_time(); "
        "exec('while time.process_time() - t < 0.3: pass')"
    )
    code = (
        "import subprocess, sys, time; subprocess.run([sys.executable, '-c', " + repr(child) + "], check=True); "
        "t = time.process_time()\nwhile time.process_time() - t < 0.2: pass"
    )
    r = run_runner(py(code))
    assert r.returncode == 0, r.report
    usage = r.report["usage"]
    assert set(usage) == {"cpuMs", "peakMemoryBytes"}
    assert usage["cpuMs"] >= 500  # 0.3 s in the child + 0.2 s in the program
    assert 64 * 1024 * 1024 <= usage["peakMemoryBytes"] < 1024 * 1024 * 1024


def test_usage_of_a_killed_program_is_still_reported(run_runner):
    # 0.3 s of the program's own CPU, then a wait for the kill: on a loaded machine a busy loop for a wall-clock
    # timeout gets less CPU than that timeout (this test failed so under parallel work).
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\ntime.sleep(60)"
    r = run_runner(py(burn), timeout=3)
    assert r.report["timedOut"] is True
    assert r.report["usage"]["cpuMs"] >= 250 and r.report["usage"]["peakMemoryBytes"] > 0


def test_invalid_arguments_are_reported(runner):
    proc = subprocess.run([str(runner), "--timeout-seconds", "soon", "--", "true"], capture_output=True, timeout=10)
    report = json.loads(proc.stdout.rstrip(b"\n").rsplit(b"\n", 1)[-1][len(REPORT_PREFIX) :])
    assert proc.returncode == 125 and report["exitCode"] == 125 and "invalid runner arguments" in report["error"]


def test_sigterm_to_the_runner_kills_the_program_and_still_reports(runner):
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    proc = subprocess.Popen(
        [str(runner), "--timeout-seconds", "60", "--max-output-bytes", "1000", "--", *py(code)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"up\n"  # the program runs
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=5)
    report = json.loads(out.rstrip(b"\n").rsplit(b"\n", 1)[-1][len(REPORT_PREFIX) :])
    assert proc.returncode == 128 + signal.SIGTERM
    assert report["exitCode"] == 128 + signal.SIGTERM and "SIGTERM" in report["error"]
    assert report["stdout"]["text"] == "up\n"


def test_background_child_in_the_program_group_is_killed(run_runner):
    # The child keeps the stdout pipe open: without the group kill the runner would wait for it.
    code = "import subprocess; p = subprocess.Popen(['sleep', '30']); print(p.pid)"
    r = run_runner(py(code))
    assert r.elapsed < 1.0
    assert wait_gone(int(r.report["stdout"]["text"]))


def test_as_pid1_setsid_background_process_is_killed_before_the_report(run_runner, pid1_prefix):
    # setsid escapes the program's process group; only PID 1's kill(-1) reaches it. It keeps the
    # stdout pipe open and prints after the program exited: that must never reach the report.
    code = (
        "import subprocess\n"
        "subprocess.Popen(['sh', '-c', 'sleep 0.5; echo late'], start_new_session=True)\n"
        "print('main')\n"
    )
    r = run_runner(py(code), prefix=pid1_prefix)
    assert r.report["stdout"]["text"] == "main\n"
    assert b"late" not in r.stdout
    assert r.elapsed < 2.0


def test_as_pid1_forking_daemon_is_killed(run_runner, pid1_prefix):
    # A detached process that keeps forking new sessions: the runner must still finish promptly.
    daemon = (
        "import os, time\n"
        "while True:\n"
        "    if os.fork() == 0:\n"
        "        os.setsid(); time.sleep(30); os._exit(0)\n"
        "    time.sleep(0.001)\n"
    )
    code = f"import subprocess, sys; subprocess.Popen([sys.executable, '-c', {daemon!r}], start_new_session=True)"
    r = run_runner(py(code + "; import time; time.sleep(0.3)"), prefix=pid1_prefix)
    assert r.report["exitCode"] == 0
    assert r.elapsed < 1.5  # without the kill the daemon holds the pipes: 2 s drain grace


def test_runner_is_not_dumpable(run_runner, nobody_prefix):
    # Same uid as the program: only PR_SET_DUMPABLE=0 keeps /proc/<runner>/environ closed to it.
    code = (
        "import os\n"
        "try:\n"
        "    print(open(f'/proc/{os.getppid()}/environ', 'rb').read())\n"
        "except PermissionError:\n"
        "    print('denied')\n"
    )
    r = run_runner(
        py(code), prefix=nobody_prefix, runner_env={"PATH": "/usr/local/bin:/usr/bin:/bin", "SECRET": "s3cret"}
    )
    assert r.report["stdout"]["text"] == "denied\n"


class Listener:
    """A local TCP server that accepts and closes every connection: a probe target that is not isolated."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        # shutdown wakes the accept() blocked in the thread; close alone would not.
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)


def closed_port() -> int:
    """A port on 127.0.0.1 that refuses connections: bound (so nobody else takes it) but not listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


MARK_STARTED = "open('started', 'w').write('yes'); print('ran')"


def test_no_probe_means_no_isolation_record(run_runner):
    r = run_runner(py("print('ran')"))
    assert r.report["exitCode"] == 0 and r.report["networkIsolation"] is None


def test_probe_refused_means_isolated_and_the_program_runs(run_runner):
    port = closed_port()
    r = run_runner(py("print('ran')"), extra_args=["--isolation-probe", f"127.0.0.1:{port}"])
    assert r.returncode == 0 and r.report["stdout"]["text"] == "ran\n"
    isolation = r.report["networkIsolation"]
    assert isolation["probe"] == f"127.0.0.1:{port}"
    assert isolation["isolated"] is True and isolation["attempts"] == 1
    assert isolation["waitedMs"] < 1000
    assert r.report["error"] is None


def test_probe_reachable_means_not_isolated_and_the_program_never_starts(run_runner, tmp_path):
    listener = Listener()
    try:
        r = run_runner(
            py(MARK_STARTED),
            extra_args=["--isolation-probe", f"127.0.0.1:{listener.port}", "--isolation-wait-seconds", "1"],
        )
    finally:
        listener.close()
    assert r.returncode == 122 and r.report["exitCode"] == 122
    assert r.report["error"].startswith("network isolation not in effect: 127.0.0.1:")
    assert not (tmp_path / "started").exists()
    assert r.report["stdout"]["text"] == "" and r.report["durationMs"] == 0
    isolation = r.report["networkIsolation"]
    assert isolation["isolated"] is False
    assert isolation["waitedMs"] >= 1000
    # Retried about every 150 ms meanwhile, each connection really made.
    assert 4 <= isolation["attempts"] <= 12 and listener.accepted == isolation["attempts"]
    assert 1.0 <= r.elapsed < 5


def test_probe_retries_until_the_policy_takes_effect(run_runner):
    listener = Listener()

    def enforce_after_two_probes() -> None:
        # The "enforcer" arrives once the runner has probed twice (counted, not timed: a loaded machine
        # starts the runner late): from then on the probe is refused.
        while listener.accepted < 2:
            time.sleep(0.01)
        listener.close()

    enforcer = threading.Thread(target=enforce_after_two_probes, daemon=True)
    enforcer.start()
    try:
        r = run_runner(py("print('ran')"), extra_args=["--isolation-probe", f"127.0.0.1:{listener.port}"])
    finally:
        listener.close()
    assert r.returncode == 0 and r.report["stdout"]["text"] == "ran\n"
    isolation = r.report["networkIsolation"]
    assert isolation["isolated"] is True and isolation["attempts"] >= 3
    # Two reachable probes 150 ms apart, then the refused one.
    assert 100 <= isolation["waitedMs"] < 5000


def test_probe_timeout_means_isolated(run_runner):
    # An enforcer that drops rather than rejects: the connect times out (a listener whose accept queue
    # is full drops SYNs the same way).
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    fillers = []
    try:
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(server.getsockname())
            fillers.append(filler)
        time.sleep(0.1)
        r = run_runner(py("print('ran')"), extra_args=["--isolation-probe", f"127.0.0.1:{server.getsockname()[1]}"])
    finally:
        for filler in fillers:
            filler.close()
        server.close()
    assert r.returncode == 0 and r.report["networkIsolation"]["isolated"] is True
    assert r.report["networkIsolation"]["waitedMs"] >= 900


@pytest.mark.parametrize("probe", ["kubernetes.default:443", "10.0.0.1", "10.0.0.1:0", "10.0.0.1:65536", "::1:443"])
def test_invalid_probe_is_an_invalid_argument(run_runner, probe):
    r = run_runner(py(MARK_STARTED), extra_args=["--isolation-probe", probe])
    assert r.returncode == 125 and "--isolation-probe" in r.report["error"]
    assert r.report["networkIsolation"] is None


def test_ipv6_probe_is_bracketed(run_runner):
    r = run_runner(py("print('ran')"), extra_args=["--isolation-probe", f"[::1]:{closed_port()}"])
    assert r.returncode == 0 and r.report["networkIsolation"]["probe"].startswith("[::1]:")
