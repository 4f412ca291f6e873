"""The operator image's recipe: pinned dependencies that satisfy pyproject, non-root, the entrypoint."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "operator/Dockerfile").read_text()


def pins() -> dict[str, str]:
    found = {}
    for line in (REPO / "operator/constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"not an exact pin: {line}"
            found[canonicalize_name(name)] = version
    return found


def test_every_runtime_dependency_is_pinned_within_its_range() -> None:
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = pins()
    for dependency in dependencies:
        requirement = Requirement(dependency)
        version = pinned.get(canonicalize_name(requirement.name))
        assert version is not None, f"{requirement.name} is not in operator/constraints.txt"
        assert requirement.specifier.contains(version), f"{requirement.name}=={version} is outside {requirement}"


def test_image_installs_with_the_pins_and_runs_as_non_root() -> None:
    assert DOCKERFILE.splitlines()[4] == "FROM localhost/codeexec/base:bookworm"
    assert "-c /src/operator/constraints.txt /src" in DOCKERFILE
    assert re.search(r"^USER 65532:65532$", DOCKERFILE, re.MULTILINE)
    assert 'ENTRYPOINT ["python", "-m", "codeexec"]' in DOCKERFILE
    assert 'CMD ["run", "--liveness", "http://0.0.0.0:8080/healthz"]' in DOCKERFILE


def test_copied_paths_exist_and_pass_the_dockerignore() -> None:
    copied = [line.split()[1] for line in DOCKERFILE.splitlines() if line.startswith("COPY ")]
    assert copied == [
        "pyproject.toml",
        "operator/constraints.txt",
        "operator/codeexec",
        "sandbox_images/runner/codeexec_runner",
    ]
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    for path in copied:
        assert (REPO / path).exists()
        assert f"!{path}" in ignore
