"""Decisions never break a hard constraint, whatever state is reported."""

from pathlib import Path

import hypothesis
import numpy as np
import pytest
from hypothesis import strategies as st

from mecrl.constraints import CONFLICTS
from mecrl.serving.bundle import Bundle, load_bundle
from mecrl.serving.decide import MOVE, REFUSED, Decider, FleetState
from mecrl.serving.schema import unreported_load


@pytest.fixture(scope="module")
def dqn(bundles: dict[str, Path]) -> Bundle:
    # DQN ignores the mask while choosing, so it proposes forbidden moves
    return load_bundle(bundles["dqn"])


@st.composite
def states(draw: st.DrawFn, bundle: Bundle) -> FleetState:
    """Services at sites their class may run on, loads at or above theirs."""
    s = bundle.scenario
    n = draw(st.integers(1, 40))
    cls = np.array(
        draw(st.lists(st.integers(0, s.classes.n_classes - 1), min_size=n, max_size=n))
    )
    n_tenants = len(s.classes.tenant_names) + 2
    tenant = np.array(
        draw(st.lists(st.integers(0, n_tenants - 1), min_size=n, max_size=n))
    )
    site = np.array(
        [
            draw(st.sampled_from(np.flatnonzero(s.constraints.static[c]).tolist()))
            for c in cls
        ]
    )
    access = np.array(
        draw(st.lists(st.integers(0, s.n_access - 1), min_size=n, max_size=n))
    )
    used_cpu = np.bincount(site, s.classes.cpu_cores[cls], minlength=s.n_sites)
    used_memory = np.bincount(site, s.classes.memory_mb[cls], minlength=s.n_sites)
    extra = np.array(
        draw(st.lists(st.floats(0, 40), min_size=s.n_sites, max_size=s.n_sites))
    )
    reported = np.array(
        draw(st.lists(st.booleans(), min_size=s.n_sites, max_size=s.n_sites))
    )
    cpu = np.where(reported, used_cpu + extra, unreported_load(s.sites.cpu_cores))
    memory = np.where(
        reported, used_memory + extra * 2048, unreported_load(s.sites.memory_mb)
    )
    slot = draw(st.integers(0, s.config.episode_slots - 1))
    return FleetState(cls, tenant, site, access, slot, cpu, memory, n_tenants)


def check_hard_constraints(bundle: Bundle, state: FleetState, new: np.ndarray) -> None:
    s = bundle.scenario
    moved = new != state.site
    c = s.constraints
    # runtime, sandboxed in Kata, zones, size, dedicated without background
    assert c.static[state.cls[moved], new[moved]].all()
    # no state across untrusted zones
    assert c.move_allowed(state.site[moved], new[moved]).all()
    for j in np.unique(new[moved]):
        # capacity: what was there plus what moved in (leaving frees nothing)
        into = moved & (new == j)
        cpu = state.cpu_used[j] + s.classes.cpu_cores[state.cls[into]].sum()
        memory = state.memory_used[j] + s.classes.memory_mb[state.cls[into]].sum()
        assert cpu <= s.sites.cpu_cores[j]
        assert memory <= s.sites.memory_mb[j]
        # dedicated: no other tenant's conflicting service on the host
        here = new == j
        for mover in np.flatnonzero(into):
            others = here & (state.tenant != state.tenant[mover])
            mine = c.categories[state.cls[mover]]
            theirs = c.categories[state.cls[others]]
            assert not CONFLICTS[mine, theirs].any()


@hypothesis.settings(
    max_examples=150, deadline=None, suppress_health_check=list(hypothesis.HealthCheck)
)
@hypothesis.given(data=st.data())
def test_no_decision_breaks_a_hard_constraint(dqn: Bundle, data: st.DataObject) -> None:
    state = data.draw(states(dqn))

    decisions = Decider(dqn).decide(state)

    check_hard_constraints(dqn, state, decisions.site)
    assert ((decisions.kind == MOVE) == (decisions.site != state.site)).all()


def test_forbidden_proposals_are_refused_not_followed(dqn: Bundle) -> None:
    rng = np.random.default_rng(0)
    s = dqn.scenario
    n = 400
    cls = rng.integers(0, s.classes.n_classes, n)
    site = np.array([rng.choice(np.flatnonzero(s.constraints.static[c])) for c in cls])
    used = np.bincount(site, s.classes.cpu_cores[cls], minlength=s.n_sites)
    used_memory = np.bincount(site, s.classes.memory_mb[cls], minlength=s.n_sites)
    state = FleetState(
        cls,
        np.zeros(n, np.int64),
        site,
        rng.integers(0, s.n_access, n),
        0,
        used,
        used_memory,
        len(s.classes.tenant_names),
    )

    decisions = Decider(dqn).decide(state)

    refused = decisions.kind == REFUSED
    assert refused.any(), "the state must provoke forbidden proposals"
    assert (decisions.site[refused] == site[refused]).all()
    assert (decisions.proposed_site[refused] != site[refused]).all()
    check_hard_constraints(dqn, state, decisions.site)
