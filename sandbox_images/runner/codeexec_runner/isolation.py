"""The isolation probe: waits until the pod's NetworkPolicy is in force before the program may start."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

from codeexec_runner.contract import IsolationDict

RETRY_SECONDS = 0.15
CONNECT_TIMEOUT_SECONDS = 1.0


@dataclass
class Isolation:
    """What the isolation probe saw: the program may start only when `isolated`."""

    probe: str
    isolated: bool
    waited_ms: int
    attempts: int

    def to_json(self) -> IsolationDict:
        return {"probe": self.probe, "isolated": self.isolated, "waitedMs": self.waited_ms, "attempts": self.attempts}


def wait_for_isolation(probe: tuple[str, int], wait_seconds: float) -> Isolation:
    """Connects to the probe address (one the pod's NetworkPolicy denies) until that fails. Enforcers
    program a new pod's rules moments after it starts; until then the code could reach anything.
    Refused, timed out or unreachable all mean the policy is in force; a connection means it is not
    yet, and after `wait_seconds` that it will not be (no enforcer): fail closed."""
    host, port = probe
    label = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    started = time.monotonic()
    attempts = 0
    while True:
        attempts += 1
        reachable = can_connect(host, port)
        waited_ms = int((time.monotonic() - started) * 1000)
        if not reachable:
            return Isolation(label, True, waited_ms, attempts)
        if waited_ms >= wait_seconds * 1000:
            return Isolation(label, False, waited_ms, attempts)
        time.sleep(RETRY_SECONDS)


def can_connect(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(CONNECT_TIMEOUT_SECONDS)
        try:
            sock.connect((host, port))
        except OSError:  # refused, timed out, unreachable, or not permitted
            return False
    return True
