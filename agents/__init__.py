"""Learned agents, baselines and oracles, behind one policy interface."""
