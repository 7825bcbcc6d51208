"""Choosing which edge sites host services: drawn, or evenly spaced as Wang et al."""

import math

import numpy as np
import pytest

from mecrl.config import ConfigError, from_dict
from mecrl.sites import SitesConfig, build_sites


def hosts(config: SitesConfig, n_sites: int, seed: int = 0) -> list[int]:
    positions = np.column_stack((np.arange(n_sites, dtype=float), np.zeros(n_sites)))
    table = build_sites(config, positions, 0, np.random.default_rng(seed))
    return np.flatnonzero(table.runtimes.any(axis=1)).tolist()


def test_evenly_spaced_hosts_are_wang_et_al_s_cells() -> None:
    config = SitesConfig(host_fraction=100 / 209, host_selection="evenly-spaced")

    chosen = hosts(config, 209)

    # 1-based cell k * 2.09 rounded half up, for k = 1..100
    assert chosen == [math.floor(k * 2.09 + 0.5 + 1e-9) - 1 for k in range(1, 101)]
    assert chosen[:3] == [1, 3, 5]
    assert chosen[-1] == 208


@pytest.mark.parametrize(("n_sites", "n_hosts"), [(1, 1), (7, 3), (10, 10), (50, 1)])
def test_evenly_spaced_hosts_are_distinct_and_in_range(
    n_sites: int, n_hosts: int
) -> None:
    config = SitesConfig(
        host_fraction=n_hosts / n_sites, host_selection="evenly-spaced"
    )

    chosen = hosts(config, n_sites)

    assert len(set(chosen)) == n_hosts
    assert min(chosen) >= 0
    assert max(chosen) < n_sites


def test_random_selection_is_the_default_and_seeded() -> None:
    explicit = SitesConfig(host_fraction=0.3, host_selection="random")

    assert hosts(SitesConfig(host_fraction=0.3), 50) == hosts(explicit, 50)
    assert hosts(explicit, 50, seed=1) != hosts(explicit, 50, seed=2)


def test_an_unknown_selection_names_the_field() -> None:
    with pytest.raises(ConfigError, match="host_selection: must be one of random"):
        from_dict(SitesConfig, {"host_selection": "greedy"})
