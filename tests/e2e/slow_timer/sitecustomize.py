"""Imported at the start of an operator whose PYTHONPATH names this directory (tests/e2e/test_ttl.py): every
call of the Execution timer's lifecycle.watch prints `slow watch of <namespace>/<name>`, then takes SLOW_SECONDS
longer, as a call waiting for a thread or the CPU on a busy node does (0.5-2.5 s seen on the 2-core dev node);
a test can then act while one is in flight."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from codeexec import lifecycle

SLOW_SECONDS = 20
_watch = lifecycle.watch


def _slow_watch(api: Any, config: Any, body: Mapping[str, Any], launched: bool) -> bool:
    print(f"slow watch of {body['metadata']['namespace']}/{body['metadata']['name']}", flush=True)
    time.sleep(SLOW_SECONDS)
    return _watch(api, config, body, launched)


lifecycle.watch = _slow_watch
