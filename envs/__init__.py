"""Gymnasium environments of mecrl, registered under ``mecrl/`` ids.

| id | class | action |
|---|---|---|
| ``mecrl/Migration-v0`` | :class:`MigrationEnv` | K candidate sites |
| ``mecrl/MigrationSites-v0`` | :class:`MigrationEnv` | every site (small maps) |
| ``mecrl/Fleet-v0`` | :class:`FleetEnv`; ``gym.make_vec`` gives |
| | :class:`FleetVectorEnv` | a candidate per service |
"""

from gymnasium.envs.registration import register, registry

from mecrl.envs.fleet import FleetCore, FleetEnv, FleetVectorEnv
from mecrl.envs.observation import FEATURES, CandidateView, ObservationLayout
from mecrl.envs.single import DEFAULT_SCENARIO, MigrationEnv, resolve_scenario

ENV_IDS: tuple[str, ...] = (
    "mecrl/Migration-v0",
    "mecrl/MigrationSites-v0",
    "mecrl/Fleet-v0",
)

if "mecrl/Migration-v0" not in registry:
    register(id="mecrl/Migration-v0", entry_point="mecrl.envs.single:MigrationEnv")
    register(
        id="mecrl/MigrationSites-v0",
        entry_point="mecrl.envs.single:MigrationEnv",
        kwargs={"scenario": "wang-1d", "action_space": "sites"},
    )
    register(
        id="mecrl/Fleet-v0",
        entry_point="mecrl.envs.fleet:FleetEnv",
        vector_entry_point="mecrl.envs.fleet:FleetVectorEnv",
    )

__all__ = [
    "DEFAULT_SCENARIO",
    "ENV_IDS",
    "FEATURES",
    "CandidateView",
    "FleetCore",
    "FleetEnv",
    "FleetVectorEnv",
    "MigrationEnv",
    "ObservationLayout",
    "resolve_scenario",
]
