"""Kopf peering settings of a replica: standalone without a peering name; else mandatory cluster-wide peering
in the named object with the configured lifetime and a priority drawn per replica (equal ones pause all)."""

from __future__ import annotations

import logging
import random

import kopf
import pytest

import codeexec.handlers
from codeexec import peering
from codeexec.config import OperatorConfig


def test_without_a_peering_name_the_operator_runs_standalone() -> None:
    settings = kopf.OperatorSettings()
    assert peering.configure(settings, OperatorConfig()) is None
    assert settings.peering.standalone is True


@pytest.mark.parametrize("namespaces", [(), ("team-a", "team-b")])
def test_peering_is_mandatory_and_cluster_wide_in_the_named_object(namespaces: tuple[str, ...]) -> None:
    settings = kopf.OperatorSettings()
    config = OperatorConfig(peering="code-exec-ops", peering_lifetime_seconds=15, namespaces=namespaces)
    priority = peering.configure(settings, config, random.Random(1))
    assert settings.peering.standalone is False
    # Not mandatory, Kopf would work alone beside another replica whenever the CRD or object is missing.
    assert settings.peering.mandatory is True
    assert settings.peering.name == "code-exec-ops"
    # One object for the release even when it watches namespaces (Kopf's default would be one per namespace).
    assert settings.peering.clusterwide is True
    assert settings.peering.lifetime == 15
    assert settings.peering.stealth is True
    assert priority == settings.peering.priority and priority in peering.PRIORITIES


def test_each_replica_draws_its_own_priority() -> None:
    """Equal priorities make Kopf pause every replica: two start-ups must not share one."""
    config = OperatorConfig(peering="p")
    drawn = set()
    for _ in range(50):
        settings = kopf.OperatorSettings()
        peering.configure(settings, config)
        drawn.add(settings.peering.priority)
    assert len(drawn) == 50
    assert min(drawn) >= 1  # above Kopf's default 0, that of a peer started without our settings


def test_the_startup_handler_applies_the_operator_config() -> None:
    settings = kopf.OperatorSettings()
    memo = kopf.Memo(config=OperatorConfig(peering="code-exec-ops"))
    codeexec.handlers.configure_peering(settings=settings, memo=memo, logger=logging.getLogger("test"))
    assert (settings.peering.name, settings.peering.mandatory) == ("code-exec-ops", True)
    assert settings.peering.lifetime == OperatorConfig().peering_lifetime_seconds
