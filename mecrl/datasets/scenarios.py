"""Helpers for scenarios built on real data.

Scenario configs name their data only by dataset (``dataset: sf-wang2019``);
the data folder comes from ``$MECRL_DATA_DIR`` unless a config carries a
``data_dir`` parameter. :func:`with_data_dir` writes that parameter into
every dataset-backed part of a config, so a script can take ``--data-dir``
without touching the environment.
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mecrl.scenario import ComponentConfig, ScenarioConfig

DATASET_TOPOLOGIES: tuple[str, ...] = ("dataset-sites",)
"""Topology kinds that read the data folder."""

DATASET_MOBILITY: tuple[str, ...] = ("dataset-replay", "gps-replay")
"""Mobility kinds that read the data folder."""


def uses_real_data(config: ScenarioConfig) -> bool:
    """Return whether building ``config`` reads the data folder."""
    return (
        config.topology.kind in DATASET_TOPOLOGIES
        or config.mobility.kind in DATASET_MOBILITY
    )


def with_data_dir(
    config: ScenarioConfig, data_dir: str | os.PathLike[str]
) -> ScenarioConfig:
    """Return ``config`` with ``data_dir`` set on its dataset-backed parts.

    Parts that read no data are left as they are, as is a config that reads
    none.
    """
    folder = os.fspath(data_dir)
    topology, mobility = config.topology, config.mobility
    if topology.kind in DATASET_TOPOLOGIES:
        topology = _with_param(topology, "data_dir", folder)
    if mobility.kind in DATASET_MOBILITY:
        mobility = _with_param(mobility, "data_dir", folder)
    return dataclasses.replace(config, topology=topology, mobility=mobility)


def _with_param(component: ComponentConfig, name: str, value: str) -> ComponentConfig:
    return dataclasses.replace(component, params={**component.params, name: value})
