"""Captures one output stream of the program (bounded) and echoes its start live to the container log."""

from __future__ import annotations

import codecs
import os

from codeexec_runner.contract import StreamDict

ECHO_LIMIT = 1024 * 1024  # bytes of each stream shown live in the container log
ECHO_NOTICE = b"[codeexec: further output not shown in the log]\n"


class Capture:
    """One output stream: keeps the first `limit` bytes, counts all, echoes the first MiB to the log."""

    def __init__(self, limit: int, echo_fd: int) -> None:
        self.limit = limit
        self.kept = bytearray()
        self.total = 0
        self.echo_fd: int | None = echo_fd
        self.echoed = 0

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.limit - len(self.kept)
        if room > 0:
            self.kept += chunk[:room]
        self._echo(chunk)

    def _echo(self, chunk: bytes) -> None:
        if self.echo_fd is None or self.echoed > ECHO_LIMIT:
            return
        part = chunk[: ECHO_LIMIT - self.echoed]
        if len(part) < len(chunk):
            part += b"\n" + ECHO_NOTICE
            self.echoed = ECHO_LIMIT + 1  # marks the notice as written
        else:
            self.echoed += len(part)
        if part:
            try:
                write_all(self.echo_fd, part)
            except OSError:
                self.echo_fd = None  # nobody reads our log any more; keep capturing regardless

    def to_json(self) -> StreamDict:
        truncated = self.total > len(self.kept)
        # A truncated prefix may end inside a multi-byte character: that is a cut, not invalid
        # data, so the incomplete tail is dropped rather than replaced.
        text = codecs.getincrementaldecoder("utf-8")("replace").decode(bytes(self.kept), final=not truncated)
        return {"text": text, "bytes": self.total, "truncated": truncated}


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
