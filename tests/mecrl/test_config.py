"""Typed configs: building from plain data, and errors that name the field."""

import copy
import re
from pathlib import Path
from typing import Any

import pytest

from mecrl.config import ConfigError, from_dict, load_file, to_dict
from mecrl.scenario import SCENARIOS, ScenarioConfig, load_config
from mecrl.sites import CloudConfig, SitesConfig


def city_data() -> dict[str, Any]:
    """Plain data of the city-grid scenario, safe to modify."""
    return copy.deepcopy(load_config("city-grid").to_dict())


def set_path(data: Any, path: str, value: Any) -> dict[str, Any]:
    """Set the dotted ``path`` (list indices as numbers) of nested ``data``."""
    *parents, last = path.split(".")
    node = data
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return data


def build(data: dict[str, Any]) -> ScenarioConfig:
    return from_dict(ScenarioConfig, data)


def test_config_error_is_a_value_error_carrying_the_field() -> None:
    error = ConfigError("sites.cpu_cores", "must be > 0")

    assert isinstance(error, ValueError)
    assert error.field == "sites.cpu_cores"
    assert str(error) == "sites.cpu_cores: must be > 0"


@pytest.mark.parametrize(
    ("path", "valid_key"),
    [
        ("bogus", "episode_slots"),
        ("sites.zonez", "zones"),
        ("services.0.state_mbb", "state_mb"),
        ("costs.weights.latency", "access_latency"),
        ("costs.distance.base", "power"),
    ],
)
def test_unknown_key_names_its_dotted_path_and_the_valid_keys(
    path: str, valid_key: str
) -> None:
    data = set_path(city_data(), path, 1.0)

    with pytest.raises(ConfigError, match=rf"^{re.escape(path)}: unknown key") as info:
        build(data)

    assert info.value.field == path
    valid = str(info.value).split("valid keys are: ", 1)[1].split(", ")
    assert valid_key in valid


@pytest.mark.parametrize(
    ("path", "valid_param"),
    [
        ("topology.params.bogus", "rings"),
        ("mobility.params.bogus", "speed_max_mps"),
    ],
)
def test_unknown_component_parameter_names_its_dotted_path(
    path: str, valid_param: str
) -> None:
    data = set_path(city_data(), path, 3)

    with pytest.raises(ConfigError, match=rf"^{re.escape(path)}: unknown parameter"):
        build(data)
    with pytest.raises(ConfigError, match=rf"valid: .*\b{valid_param}\b"):
        build(data)


def test_mobility_parameters_exclude_the_topology_argument() -> None:
    data = set_path(city_data(), "mobility.params.topology", None)

    with pytest.raises(ConfigError, match=r"^mobility\.params\.topology: unknown"):
        build(data)


@pytest.mark.parametrize(
    ("path", "value"),
    [("sites.cloud.bogus", 1.0), ("sites.cloud.rtt_ms", -1.0)],
)
def test_error_inside_an_optional_section_names_the_nested_field(
    path: str, value: float
) -> None:
    data = set_path(city_data(), path, value)

    with pytest.raises(ConfigError) as info:
        build(data)

    assert info.value.field == path


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("episode_slots", "ten", "expected an integer, got 'ten'"),
        ("episode_slots", True, "expected an integer, got True"),
        ("episode_slots", 10.5, "expected an integer, got 10.5"),
        ("slot_s", "fast", "expected a number, got 'fast'"),
        ("slot_s", False, "expected a number, got False"),
        ("slot_s", "nan", "expected a finite number"),
        ("prefetch_layers", "yes", "expected true or false"),
        ("name", 7, "expected a string, got 7"),
        ("calibration", 3, "expected a string, got 3"),
        ("services", "ar-render", "expected a list, got str"),
        ("services.0", "ar-render", "expected a mapping, got str"),
        ("services.0.tenants", "acme", "expected a list, got str"),
        ("services.0.tenants.1", 5, "expected a string, got 5"),
        ("sites", [], "expected a mapping, got list"),
        ("sites.zones", "west", "expected a list"),
        ("sites.untrusted_zone_pairs.0", ["west"], "expected 2 items, got 1"),
        ("layers", ["debian-base"], "expected a mapping, got list"),
        ("layers.ar-engine", "big", "expected a number, got 'big'"),
        ("topology.params", [], "expected a mapping, got list"),
    ],
)
def test_value_of_wrong_type_names_its_field(
    path: str, value: Any, message: str
) -> None:
    data = set_path(city_data(), path, value)

    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        build(data)

    assert info.value.field == path


def test_numbers_convert_where_lossless() -> None:
    data = city_data()
    data["slot_s"] = 30
    data["layers"]["ar-engine"] = "3.5e2"  # YAML 1.1 reads this as a string

    config = build(data)

    assert config.slot_s == 30.0
    assert isinstance(config.slot_s, float)
    assert config.layers["ar-engine"] == 350.0


def test_sequences_become_tuples() -> None:
    config = build(city_data())

    assert isinstance(config.services, tuple)
    assert config.sites.untrusted_zone_pairs == (("west", "east"),)
    assert config.services[0].tenants == ("acme", "globex")


def test_missing_required_field_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="topology"):
        build({"name": "bare"})


def test_nested_check_failure_names_the_full_path() -> None:
    data = set_path(city_data(), "costs.weights.downtime", -1.0)

    with pytest.raises(
        ConfigError, match=r"^costs\.weights\.downtime: must be >= 0"
    ) as info:
        build(data)

    assert info.value.field == "costs.weights.downtime"


def test_to_dict_then_from_dict_gives_the_same_config() -> None:
    for name in SCENARIOS.names():
        config = load_config(name)

        assert from_dict(ScenarioConfig, to_dict(config)) == config


def test_to_dict_gives_plain_data() -> None:
    data = to_dict(SitesConfig(zones=("a", "b"), cloud=CloudConfig(rtt_ms=50.0)))

    assert data["zones"] == ["a", "b"]
    assert data["cloud"] == {"rtt_ms": 50.0, "bandwidth_mbps": 1000.0}


def test_from_dict_rejects_a_non_mapping() -> None:
    with pytest.raises(ConfigError, match="expected a mapping, got list"):
        from_dict(SitesConfig, [1, 2])


def test_load_file_reads_yaml_and_toml(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("x: 1\nnested: {y: [1, 2]}\n")
    (tmp_path / "b.yml").write_text("x: 1\nnested: {y: [1, 2]}\n")
    (tmp_path / "c.toml").write_text("x = 1\n[nested]\ny = [1, 2]\n")

    expected = {"x": 1, "nested": {"y": [1, 2]}}
    for name in ("a.yaml", "b.yml", "c.toml"):
        assert load_file(tmp_path / name) == expected


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("config.json", "{}", "must end in .yaml, .yml or .toml"),
        ("config.yaml", "- 1\n- 2\n", "mapping at top level"),
        ("config.yaml", "a: [1, 2\n", "invalid YAML"),
        ("config.toml", "a = [1, 2\n", "invalid TOML"),
    ],
)
def test_load_file_rejects_bad_files(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(text)

    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        load_file(path)

    assert info.value.field == str(path)
