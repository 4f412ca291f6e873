"""A call's rows as JSON values, counted against its row and byte limits as they are read."""

from __future__ import annotations

import base64
import datetime
import decimal
import json
import math
import uuid
from collections.abc import Mapping
from typing import Any

from codeexec.broker.errors import LimitExceeded
from codeexec.broker.limits import CallLimits

JsonRow = dict[str, Any]


def json_value(value: Any) -> Any:
    """A database value as JSON: numbers, strings, booleans and null as they are; blobs as base64 (D1 gives an
    array of byte values, far larger); exact decimals, times and UUIDs as their text; arrays and composites as
    lists; infinities and NaN (which JSON lacks) as their text."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (decimal.Decimal, datetime.timedelta, uuid.UUID)):
        return str(value)
    if isinstance(value, Mapping):
        return {str(key): json_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_value(item) for item in value]
    return str(value)


class Rows:
    """The rows a call returns; `add` refuses the row past the call's limits (LimitExceeded)."""

    def __init__(self, limits: CallLimits) -> None:
        self._limits = limits
        self.rows: list[JsonRow] = []
        # The JSON of `"results": [...]`'s brackets: each row adds its own length and a comma.
        self._bytes = 2

    def add(self, columns: list[str], values: tuple[Any, ...] | list[Any]) -> None:
        if len(self.rows) >= self._limits.max_rows:
            raise LimitExceeded(f"the result has more than {self._limits.max_rows} rows ({self._limits.rows_limit})")
        row = {column: json_value(value) for column, value in zip(columns, values, strict=True)}
        self._bytes += len(json.dumps(row, ensure_ascii=False).encode()) + 1
        if self._bytes > self._limits.max_bytes:
            raise LimitExceeded(f"the result has more than {self._limits.max_bytes} bytes of JSON (maxBytesPerCall)")
        self.rows.append(row)
