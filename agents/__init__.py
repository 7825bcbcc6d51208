"""Agents: baselines and oracles behind one policy interface.

Importing this package registers the baseline policies in ``POLICIES``.
"""

from mecrl.agents import baselines
from mecrl.agents.policy import POLICIES, Policy, PolicyContext, make_policy

__all__ = ["POLICIES", "Policy", "PolicyContext", "baselines", "make_policy"]
