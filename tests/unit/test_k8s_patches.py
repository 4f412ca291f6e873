"""Unit tests of the status patch shapes in codeexec.k8s: a result holding nulls is written by JSON Patch."""

from __future__ import annotations

from typing import Any

import pytest

from codeexec.k8s import merge_patch_drops_nulls, status_json_patch


@pytest.mark.parametrize(
    "result",
    [{"a": None}, [1, {"b": None}], {"deep": {"er": [{"c": None}]}}],
)
def test_a_result_with_a_null_member_needs_a_json_patch(result: Any) -> None:
    assert merge_patch_drops_nulls({"phase": "Succeeded", "result": result})


@pytest.mark.parametrize("result", [None, [None, 1], {"a": 0, "b": [None]}, "text", 3])
def test_other_results_keep_the_merge_patch(result: Any) -> None:
    # A null alone or inside a list survives a merge patch (lists are replaced whole).
    assert not merge_patch_drops_nulls({"phase": "Succeeded", "result": result, "queuePosition": None})


def test_the_json_patch_sets_each_key_and_keeps_the_version_precondition() -> None:
    status = {"phase": "Succeeded", "result": {"a": None}, "queuePosition": None}
    assert status_json_patch(status, "42") == [
        {"op": "replace", "path": "/metadata/resourceVersion", "value": "42"},
        {"op": "add", "path": "/status/phase", "value": "Succeeded"},
        {"op": "add", "path": "/status/result", "value": {"a": None}},
        {"op": "add", "path": "/status/queuePosition", "value": None},
    ]


def test_the_json_patch_without_a_version_has_no_precondition() -> None:
    assert status_json_patch({"phase": "Failed"}, None) == [{"op": "add", "path": "/status/phase", "value": "Failed"}]
