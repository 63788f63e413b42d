"""The rules in force, shared by the request path and its collaborators.

A reload replaces them as a whole (``RulesInForce.set``); every collaborator reads ``rules`` and
``gen_ttl`` at the moment it needs them, so none keeps a copy that a reload would leave behind.
"""
from __future__ import annotations

from ..core import policy
from ..core.rules import Rules


class RulesInForce:
    def __init__(self, rules: Rules):
        self.set(rules)

    def set(self, rules: Rules) -> None:
        self.rules = rules
        self.gen_ttl = policy.generation_ttl(rules)  # generations outlive every entry they guard
        self.rollout_rules = frozenset(r.name for r in rules.rules if r.key is not None and r.rollout < 100)

    @property
    def prefix(self) -> str:
        return self.rules.prefix
