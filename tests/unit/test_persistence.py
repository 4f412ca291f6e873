"""Kopf's bookkeeping annotations stay small however large the Execution's spec is."""

from __future__ import annotations

from typing import Any

import kopf

import codeexec.handlers
from codeexec.models import GROUP, MAX_CODE_BYTES, MAX_INPUT_BYTES, MAX_STDIN_BYTES
from codeexec.persistence import DigestDiffBaseStorage

# The API server's limit on all annotations of an object together.
ANNOTATIONS_LIMIT = 256 * 1024


def execution(spec: dict[str, Any], annotations: dict[str, str] | None = None) -> kopf.Body:
    return kopf.Body(
        {
            "apiVersion": f"{GROUP}/v1alpha1",
            "kind": "Execution",
            "metadata": {"name": "big", "namespace": "ns", "uid": "u-1", "annotations": annotations or {}},
            "spec": spec,
            "status": {"phase": "Running"},
        }
    )


LARGEST_SPEC = {
    "language": "python",
    "code": "#" + "x" * (MAX_CODE_BYTES - 1),
    "stdin": "s" * MAX_STDIN_BYTES,
    "input": "i" * (MAX_INPUT_BYTES - 2),
}


def stored_annotations(storage: DigestDiffBaseStorage, body: kopf.Body) -> dict[str, str]:
    patch = kopf.Patch()
    storage.store(body=body, patch=patch, essence=storage.build(body=body))
    annotations: dict[str, str] = patch["metadata"]["annotations"]
    return annotations


def test_the_largest_valid_spec_leaves_a_small_annotation() -> None:
    storage = DigestDiffBaseStorage(prefix=GROUP)
    annotations = stored_annotations(storage, execution(LARGEST_SPEC))
    assert sum(len(key) + len(value) for key, value in annotations.items()) < 200
    # Kopf's own storage copies the spec: more than the API server accepts in annotations.
    kopf_copy = stored_annotations(kopf.AnnotationsDiffBaseStorage(prefix=GROUP), execution(LARGEST_SPEC))
    assert sum(len(value) for value in kopf_copy.values()) > ANNOTATIONS_LIMIT


def test_stored_digest_reads_back_as_unchanged() -> None:
    storage = DigestDiffBaseStorage(prefix=GROUP)
    body = execution({"language": "python", "code": "print(1)"})
    annotations = stored_annotations(storage, body)
    handled = execution({"code": "print(1)", "language": "python"}, annotations)  # other key order
    assert storage.fetch(body=handled) == storage.build(body=handled)


def test_digest_changes_with_the_spec_and_user_labels_but_not_with_status_or_kubectl() -> None:
    storage = DigestDiffBaseStorage(prefix=GROUP)
    base = storage.build(body=execution({"language": "python", "code": "print(1)"}))
    edited = storage.build(body=execution({"language": "python", "code": "print(2)"}))
    assert base != edited
    kubectl_copy = {"kubectl.kubernetes.io/last-applied-configuration": "{}"}
    assert storage.build(body=execution({"language": "python", "code": "print(1)"}, kubectl_copy)) == base
    labelled = execution({"language": "python", "code": "print(1)"})
    labelled["metadata"]["labels"] = {"team": "a"}
    assert storage.build(body=labelled) != base


def test_the_operator_uses_the_digest_storage() -> None:
    settings = kopf.OperatorSettings()
    codeexec.handlers.configure(settings=settings)
    assert isinstance(settings.persistence.diffbase_storage, DigestDiffBaseStorage)
