"""Benchmark: the operator's resident memory (VmRSS) with many finished Executions stored (issue 8: at most
150 MiB with 1,000 stored), at three moments of one local operator (python -m codeexec run, as the e2e session
runs it, watching only the benchmark's namespace): idle, after --stored (1000) finished Executions are stored
(cheap ones, rejected at once: no pods), and after the operator is restarted with them stored (it lists them all
again, as after an upgrade or a crash). Optionally a burst of -n real Executions first (default 0: pods are slow
on a small node). Each figure is read --settle seconds after the step (the peak seen meanwhile beside it), with
the operator's thread count (each thread may get its own glibc malloc arena).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from kubernetes import client, config

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.bench.burst import rss_mib, run_executions, store_rejected  # noqa: E402
from tests.bench.setup import bench  # noqa: E402


def status_field(pid: int, name: str) -> int:
    """A number of /proc/PID/status (VmRSS in KiB, Threads)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split()[1])
    raise LookupError(name)


def settled(pid: int, seconds: float) -> str:
    """VmRSS after `seconds`, sampled every second meanwhile: the last figure, the peak, the threads."""
    peak = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        peak = max(peak, status_field(pid, "VmRSS"))
        time.sleep(1)
    peak = max(peak, status_field(pid, "VmRSS"))
    return f"{rss_mib(pid)} (peak {peak / 1024:.0f} MiB, {status_field(pid, 'Threads')} threads)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=0, help="a burst of this many real Executions first")
    parser.add_argument("--stored", type=int, default=1000, help="finished Executions to store")
    parser.add_argument("--settle", type=float, default=20, help="seconds to wait before each reading")
    args = parser.parse_args()

    config.load_kube_config()
    core, custom = client.CoreV1Api(), client.CustomObjectsApi()
    with bench(core, None, True) as setup:
        operator = setup.operator
        assert operator is not None and operator.pid is not None
        figures = [("idle", settled(operator.pid, args.settle))]
        if args.n:
            burst = run_executions(core, custom, setup.execution_namespace, args.n)
            figures.append((f"after a burst of {args.n} ({burst['ok']} ok)", settled(operator.pid, args.settle)))
        store_rejected(custom, setup.execution_namespace, args.stored)
        total = args.n + args.stored
        figures.append((f"{total} finished Executions stored", settled(operator.pid, args.settle)))
        operator.stop()
        operator.start()
        assert operator.pid is not None
        figures.append((f"restarted with {total} stored", settled(operator.pid, args.settle)))

    print(f"\noperator VmRSS (read {args.settle:.0f}s after each step):")
    for label, figure in figures:
        print(f"  {label:40s} {figure}")


if __name__ == "__main__":
    main()
