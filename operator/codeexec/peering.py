"""Kopf peering settings of one operator replica: which peering object, its lifetime, and a priority of its own."""

from __future__ import annotations

import random

import kopf

from codeexec.config import OperatorConfig

# Kopf pauses every replica when two live ones have the same priority (it cannot tell which should work),
# so each replica draws its own at start-up. Two of 2**31 values collide with negligible probability.
PRIORITIES = range(1, 2**31)


def configure(settings: kopf.OperatorSettings, config: OperatorConfig, rng: random.Random | None = None) -> int | None:
    """Sets Kopf's peering from the config; returns the priority drawn, or None when standalone."""
    if not config.peering:
        settings.peering.standalone = True
        return None
    settings.peering.standalone = False
    # Mandatory: without the peering CRD or object Kopf pauses instead of working alone beside another replica.
    settings.peering.mandatory = True
    settings.peering.name = config.peering
    # One cluster-wide object per release, whatever namespaces it watches (Kopf's default for a namespaced
    # operator is a KopfPeering object in every watched namespace, which patterns cannot name in advance).
    settings.peering.clusterwide = True
    settings.peering.lifetime = config.peering_lifetime_seconds
    # Keep-alives every few seconds would fill the log; pauses and resumptions are still logged.
    settings.peering.stealth = True
    settings.peering.priority = (rng or random.SystemRandom()).choice(PRIORITIES)
    return settings.peering.priority
