"""Tests of the runner's warm mode (the zipapp with --warm) on the host, with the Python harness as the program:
ready file, request reading and its errors, the timeout clock, one request only, stopping while waiting."""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from pathlib import Path

import pytest
from test_runner import Listener, closed_port, wait_gone

from codeexec_runner.contract import EXIT_NO_REQUEST, MAX_WARM_REQUEST_BYTES, WARM_ACCEPTED

HARNESS = str(Path(__file__).resolve().parents[2] / "python" / "harness.py")
PYTHON_HARNESS = ["python3", HARNESS]


def test_hello_after_the_ready_file(start_warm, warm_request):
    """The ready file comes before any request, nothing reaches stdout before the acknowledgement, then the
    program's output and the report last."""
    warm = start_warm(PYTHON_HARNESS)
    warm.wait_ready()
    # Nothing on stdout while waiting: the acknowledgement must be the first bytes the operator reads.
    assert not (warm.warm_dir / "main.py").exists()
    r = warm.finish(warm_request("print('hello')\nreturn 42"))
    assert r.returncode == 0 and r.report["exitCode"] == 0 and r.report["error"] is None
    assert r.after_acknowledgement().startswith(b"hello\n")
    assert r.report["stdout"]["text"] == "hello\n" and r.report["result"] == 42
    assert r.report["durationMs"] < 5000
    # The harness is the program: its CPU time counts from its start (the interpreter's preload too,
    # as a cold run's interpreter start counts), its resident set is at least the interpreter's.
    assert r.report["usage"]["cpuMs"] >= 0 and r.report["usage"]["peakMemoryBytes"] > 1024 * 1024


def test_usage_counts_the_cpu_the_request_burns(start_warm, warm_request):
    warm = start_warm(PYTHON_HARNESS)
    warm.wait_ready()
    r = warm.finish(warm_request("import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"))
    assert r.returncode == 0 and r.report["usage"]["cpuMs"] >= 300


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda request: b"", "stdin closed before a request arrived; no program ran"),
        (
            lambda request: b'{"fileName": "main.py"',
            "stdin closed before a request arrived (22 bytes without a newline)",
        ),
        (lambda request: b"not json\n", "invalid request: not one line of ASCII JSON"),
        (lambda request: b"[1, 2]\n", "invalid request: not a JSON object"),
        (lambda request: '{"code": "\u00e9"}\n'.encode(), "invalid request: not one line of ASCII JSON"),
        (lambda request: b'{"fileName": "main.py"}\n', "invalid request: its keys must be exactly args, code, env"),
        (lambda request: request("")[:-2] + b', "image": "evil"}\n', "invalid request: its keys must be exactly"),
        (lambda request: request("", file_name="../main.py"), "fileName '../main.py' is not a plain file name"),
        (lambda request: request("", file_name="sub/main.py"), "fileName 'sub/main.py' is not a plain file name"),
        (lambda request: request("", file_name=""), "fileName '' is not a plain file name"),
        (lambda request: request("", file_name="ready"), "fileName 'ready' is not a plain file name"),
        (lambda request: request("", file_name="stdin"), "fileName 'stdin' is not a plain file name"),
        (lambda request: request("", env={"A=B": "x"}), "env must map variable names to strings"),
        (lambda request: request("", env={"PYTHONPATH": "/x"}), "env sets a variable the interpreter reads at"),
        (lambda request: request("", env={"NODE_OPTIONS": "--x"}), "env sets a variable the interpreter reads at"),
        (lambda request: request("", env={"LD_PRELOAD": "/x.so"}), "env sets a variable the interpreter reads at"),
        (lambda request: request("", args=["a\u0000b"]), "args must be a list of strings"),
        (lambda request: request("", timeout=0), "timeoutSeconds must be a positive number"),
        (lambda request: request("", timeout=-1), "timeoutSeconds must be a positive number"),
        (lambda request: request("", timeout=True), "timeoutSeconds must be a positive number"),
        (lambda request: request("", timeout="5"), "timeoutSeconds must be a positive number"),
        (lambda request: request("").replace(b": 10}", b": Infinity}"), "not one line of ASCII JSON"),
        (lambda request: request("", stdin="\ud800"), "stdin must be a string of Unicode characters"),
    ],
)
def test_request_errors_end_with_123_and_no_program(start_warm, warm_request, make, message):
    """A request the runner cannot honour exactly never reaches the harness, which is killed."""
    warm = start_warm(PYTHON_HARNESS)
    warm.wait_ready()
    harness = warm.harness_pid()
    r = warm.finish(make(warm_request))
    assert r.returncode == EXIT_NO_REQUEST and r.report["exitCode"] == EXIT_NO_REQUEST
    assert message in r.report["error"]
    assert WARM_ACCEPTED not in r.stdout
    assert r.report["stdout"]["text"] == "" and r.report["durationMs"] == 0
    assert wait_gone(harness), "the pre-started harness survived"


def test_oversized_request_is_refused_without_reading_it_all(start_warm, warm_request):
    warm = start_warm(PYTHON_HARNESS)
    warm.wait_ready()
    code = "#" * MAX_WARM_REQUEST_BYTES
    r = warm.finish(warm_request(code) + warm_request("print('next')"))
    assert r.returncode == EXIT_NO_REQUEST
    assert r.report["error"] == f"the request is longer than {MAX_WARM_REQUEST_BYTES} bytes; no program ran"
    assert WARM_ACCEPTED not in r.stdout and b"next" not in r.stdout


def test_largest_request_is_accepted(start_warm, warm_request):
    warm = start_warm(PYTHON_HARNESS)
    warm.wait_ready()
    line = warm_request("print('big')\n#")
    line = line.replace(b"\\n#", b"\\n#" + b"x" * (MAX_WARM_REQUEST_BYTES - len(line)))
    assert len(line) == MAX_WARM_REQUEST_BYTES
    r = warm.finish(line)
    assert r.returncode == 0 and r.report["stdout"]["text"] == "big\n"


def test_timeout_clock_starts_with_the_request(start_warm, warm_request):
    """Seen failing (timedOut at once) with the clock left at the harness's spawn."""
    warm = start_warm(PYTHON_HARNESS)
    warm.wait_ready()
    time.sleep(2)  # the idle pool pod: not the thing waited on, the thing under test
    r = warm.finish(warm_request("import time\ntime.sleep(1)\nprint('done')", timeout=1.5))
    assert r.returncode == 0 and r.report["timedOut"] is False and r.report["stdout"]["text"] == "done\n"
    assert 1000 <= r.report["durationMs"] < 1500


def test_timeout_kills_the_program(start_warm, warm_request):
    warm = start_warm(PYTHON_HARNESS)
    warm.wait_ready()
    r = warm.finish(warm_request("print('spinning', flush=True)\nwhile True: pass", timeout=1))
    assert r.returncode == 124 and r.report["timedOut"] is True and r.report["signal"] == signal.SIGKILL
    assert r.report["stdout"]["text"] == "spinning\n"
    assert 1000 <= r.report["durationMs"] < 1500 and r.elapsed < 2.5


def test_input_env_args_and_stdin_reach_the_code_as_in_the_cold_path(start_warm, warm_request):
    """Seen failing (CODEEXEC_REQUEST_FD in the code's environment) when the harness did not unset it."""
    code = (
        "import json, os, subprocess, sys\n"
        "child = subprocess.run(['sh', '-c', 'echo $GREETING'], capture_output=True, text=True).stdout\n"
        "return {'input': input, 'argv': sys.argv[1:], 'stdin': sys.stdin.read(), 'env': dict(os.environ),\n"
        "        'child': child, 'file': __file__, 'inputFile': open(os.environ['CODEEXEC_INPUT_FILE']).read()}\n"
    )
    env = {"GREETING": "hello world", "HOME": "/home/override"}
    warm = start_warm(PYTHON_HARNESS)
    warm.wait_ready()
    request = warm_request(code, input={"n": [1, 2]}, stdin="line 1\nline 2", env=env, args=["a", "b c"])
    r = warm.finish(request)
    assert r.returncode == 0, r.report["stderr"]["text"]
    result = r.report["result"]
    assert result["input"] == {"n": [1, 2]} and result["argv"] == ["a", "b c"]
    assert result["stdin"] == "line 1\nline 2" and result["child"] == "hello world\n"
    assert result["file"] == str(warm.warm_dir / "main.py") and json.loads(result["inputFile"]) == {"n": [1, 2]}
    # The cold path's environment exactly (tests/test_runner.py), nothing of the waiting phase.
    assert result["env"] == {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": "/home/override",
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "CODEEXEC_CHANNEL_FD": "3",
        "CODEEXEC_INPUT_FILE": str(warm.warm_dir / "input.json"),
        "GREETING": "hello world",
    }


FDS = "import os\nprint(sorted(os.listdir('/proc/self/fd')))"


def test_no_descriptor_of_the_waiting_phase_stays_open(start_warm, run_runner, warm_request):
    """Seen failing with fd 4 (the request pipe) still open in the code when the harness did not close it."""
    cold = run_runner([*PYTHON_HARNESS, "main.py"], files={"main.py": FDS})
    warm = start_warm(PYTHON_HARNESS)
    warm.wait_ready()
    r = warm.finish(warm_request(FDS))
    assert r.report["stdout"]["text"] == cold.report["stdout"]["text"]


def test_only_the_first_request_is_read(start_warm, warm_request):
    """Seen failing (no BrokenPipeError: the runner's stdin still open) when the runner kept its fd 0."""
    warm = start_warm(PYTHON_HARNESS)
    warm.wait_ready()
    first = warm_request("import sys\nprint('first', repr(sys.stdin.read()))", stdin="own stdin")
    assert warm.proc.stdin is not None and warm.proc.stdout is not None
    warm.proc.stdin.write(first + warm_request("print('second')"))
    warm.proc.stdin.flush()
    assert warm.proc.stdout.readline() == WARM_ACCEPTED
    # The runner has stopped reading its stdin: nobody reads what comes next.
    stdin = warm.proc.stdin

    def write_another() -> None:
        stdin.write(warm_request("print('third')"))
        stdin.flush()

    with pytest.raises(BrokenPipeError):
        write_another()
    warm.proc.stdin = None  # closed on our side by the failed flush
    r = warm.finish()
    assert r.returncode == 0 and r.report["stdout"]["text"] == "first 'own stdin'\n"
    assert b"second" not in r.stdout and b"third" not in r.stdout


def test_sigterm_while_waiting_reports_and_kills_the_harness(start_warm):
    warm = start_warm(PYTHON_HARNESS)
    warm.wait_ready()
    harness = warm.harness_pid()
    warm.proc.send_signal(signal.SIGTERM)
    r = warm.finish()
    assert r.returncode == 128 + signal.SIGTERM and r.report["exitCode"] == 128 + signal.SIGTERM
    assert r.report["error"] == "runner received SIGTERM while waiting for a request; no program ran"
    assert WARM_ACCEPTED not in r.stdout
    assert wait_gone(harness)


def test_sigterm_before_the_harness_is_ready(start_warm):
    warm = start_warm(["python3", "-c", "import time; time.sleep(60)"])  # never says ready
    give_up = time.monotonic() + 10
    while not Path(f"/proc/{warm.proc.pid}/task/{warm.proc.pid}/children").read_text().strip():
        assert time.monotonic() < give_up
        time.sleep(0.01)
    harness = warm.harness_pid()
    warm.proc.send_signal(signal.SIGTERM)
    r = warm.finish()
    assert r.returncode == 128 + signal.SIGTERM and "while waiting" in r.report["error"]
    assert not warm.ready_file.exists() and wait_gone(harness)


def test_a_harness_that_fails_to_start_is_126_with_its_output(start_warm):
    """The pod never becomes Ready; the report tells why (the harness's stderr), for the pool's events."""
    warm = start_warm(["python3", "-c", "import sys; print('no module named x', file=sys.stderr); sys.exit(1)"])
    r = warm.finish(timeout=10)
    assert r.returncode == 126 and r.report["exitCode"] == 126
    assert r.report["error"] in {
        "the harness ended before a request arrived",
        "the harness closed its channel before it was ready",
    }
    assert r.report["stderr"]["text"] == "no module named x\n"
    assert r.report["usage"] is None  # no request, so no program ran
    assert not warm.ready_file.exists() and WARM_ACCEPTED not in r.stdout


def test_a_harness_that_breaks_the_ready_protocol_is_126(start_warm):
    warm = start_warm(["python3", "-c", "import os, time; os.write(3, b'hello\\n'); time.sleep(60)"])
    r = warm.finish(timeout=10)
    assert r.returncode == 126 and r.report["error"] == "the harness's first channel line is not its ready message"
    assert not warm.ready_file.exists()


def test_a_harness_that_dies_while_waiting_is_126(start_warm):
    warm = start_warm(PYTHON_HARNESS)
    warm.wait_ready()
    os.kill(warm.harness_pid(), signal.SIGKILL)
    warm.proc.wait(timeout=10)  # by itself: our stdin stays open
    r = warm.finish()
    assert r.returncode == 126 and r.report["error"] == "the harness ended before a request arrived"


def test_isolation_probe_comes_before_ready(start_warm, warm_request):
    port = closed_port()
    warm = start_warm(PYTHON_HARNESS, extra_args=["--isolation-probe", f"127.0.0.1:{port}"])
    warm.wait_ready()
    r = warm.finish(warm_request("print('ran')"))
    assert r.returncode == 0 and r.report["networkIsolation"]["isolated"] is True


def test_not_isolated_means_never_ready_and_no_harness(start_warm, tmp_path):
    listener = Listener()
    try:
        warm = start_warm(
            ["python3", "-c", "open('started', 'w').write('yes')"],
            extra_args=["--isolation-probe", f"127.0.0.1:{listener.port}", "--isolation-wait-seconds", "0.5"],
        )
        r = warm.finish(timeout=10)
    finally:
        listener.close()
    assert r.returncode == 122 and r.report["networkIsolation"]["isolated"] is False
    assert not warm.ready_file.exists() and not (tmp_path / "started").exists()


def test_timeout_flag_is_refused_in_warm_mode(start_warm):
    r = start_warm(PYTHON_HARNESS, extra_args=["--timeout-seconds", "5"]).finish(timeout=10)
    assert r.returncode == 125
    assert r.report["error"] == "invalid runner arguments: --timeout-seconds cannot be used with --warm"


def test_runner_is_not_dumpable_in_warm_mode(start_warm, nobody_prefix, warm_request):
    # Same uid as the program: PR_SET_DUMPABLE=0 keeps the runner's stdin (the request stream) and
    # environment out of the code's reach.
    code = (
        "import os\n"
        "for what in ('environ', 'fd/0'):\n"
        "    try:\n"
        "        print(what, os.readlink(f'/proc/{os.getppid()}/{what}') if what == 'fd/0' else\n"
        "              open(f'/proc/{os.getppid()}/{what}', 'rb').read())\n"
        "    except PermissionError:\n"
        "        print(what, 'denied')\n"
    )
    with tempfile.TemporaryDirectory() as shared:  # tmp_path's parents are closed to uid 65534
        Path(shared).chmod(0o777)
        warm = start_warm(
            PYTHON_HARNESS,
            prefix=nobody_prefix,
            runner_env={"PATH": "/usr/local/bin:/usr/bin:/bin", "SECRET": "s"},
            warm_dir=Path(shared) / "warm",
        )
        warm.wait_ready()
        r = warm.finish(warm_request(code))
    assert r.report["stdout"]["text"] == "environ denied\nfd/0 denied\n"


def test_a_warm_directory_that_cannot_be_made_is_reported(start_warm, tmp_path):
    (tmp_path / "file").write_text("")
    r = start_warm(PYTHON_HARNESS, warm_dir=tmp_path / "file" / "warm").finish(timeout=10)
    assert r.returncode == 125 and r.report["error"].startswith("cannot prepare the warm directory")
