"""Splits an `exec` script into its statements (SQLite's or PostgreSQL's quoting and comments), so each runs on
its own inside the call's transaction, with its own timeout, checks and count.

A wrong split cannot widen what a script may do: every piece is still run as exactly one statement (SQLite's
prepare and PostgreSQL's extended protocol refuse more), so a mistake here only fails a script."""

from __future__ import annotations

import re
import sqlite3
from typing import Literal

Dialect = Literal["sqlite", "postgres"]

_DOLLAR_TAG = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")
_WORD = re.compile(r"[A-Za-z_]+")


def split(script: str, dialect: Dialect) -> list[str]:
    """The script's statements, without empty ones (only blanks, comments or semicolons)."""
    statements: list[str] = []
    start = i = 0
    n = len(script)
    while i < n:
        end = _skip_token(script, i, dialect)
        if end > i:
            i = end
            continue
        if script[i] == ";":
            piece = script[start : i + 1]
            # A SQLite trigger's body holds semicolons before its END; SQLite's own tokenizer says when a
            # statement is complete.
            if dialect == "postgres" or sqlite3.complete_statement(piece):
                statements.append(piece)
                start = i + 1
        i += 1
    statements.append(script[start:])
    return [statement for statement in statements if first_word(statement, dialect) is not None]


def first_word(statement: str, dialect: Dialect) -> str | None:
    """The statement's first keyword in capitals (after blanks and comments); None when it has none."""
    i = 0
    while i < len(statement):
        if statement[i].isspace() or statement[i] == ";":
            i += 1
        elif statement.startswith(("--", "/*"), i):
            i = _skip_token(statement, i, dialect)
        else:
            word = _WORD.match(statement, i)
            return word.group(0).upper() if word else statement[i]
    return None


def _skip_token(text: str, i: int, dialect: Dialect) -> int:
    """The end of the quoted string, quoted identifier or comment starting at i; i when none starts there."""
    char = text[i]
    if text.startswith("--", i):
        end = text.find("\n", i)
        return len(text) if end < 0 else end + 1
    if text.startswith("/*", i):
        return _block_comment_end(text, i, nested=dialect == "postgres")
    if char in "'\"":
        backslashes = (
            dialect == "postgres" and char == "'" and i > 0 and text[i - 1] in "eE" and _starts_word(text, i - 1)
        )
        return _quoted_end(text, i, char, backslashes)
    if dialect == "sqlite" and char == "`":
        return _quoted_end(text, i, "`", False)
    if dialect == "sqlite" and char == "[":
        end = text.find("]", i + 1)
        return len(text) if end < 0 else end + 1
    if dialect == "postgres" and char == "$" and not (i > 0 and (text[i - 1].isalnum() or text[i - 1] == "_")):
        tag = _DOLLAR_TAG.match(text, i)
        if tag:
            end = text.find(tag.group(0), tag.end())
            return len(text) if end < 0 else end + len(tag.group(0))
    return i


def _starts_word(text: str, i: int) -> bool:
    return i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")


def _quoted_end(text: str, i: int, quote: str, backslashes: bool) -> int:
    """After the closing quote (a doubled quote is one character of the string; with backslashes, \\x too)."""
    j = i + 1
    while j < len(text):
        if backslashes and text[j] == "\\":
            j += 2
        elif text[j] == quote:
            if text.startswith(quote, j + 1):
                j += 2
            else:
                return j + 1
        else:
            j += 1
    return len(text)


def _block_comment_end(text: str, i: int, nested: bool) -> int:
    depth, j = 0, i
    while j < len(text):
        if text.startswith("/*", j):
            depth = depth + 1 if nested or depth == 0 else depth
            j += 2
        elif text.startswith("*/", j):
            depth -= 1
            j += 2
            if depth == 0:
                return j
        else:
            j += 1
    return len(text)
