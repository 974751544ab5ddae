"""The commented example configuration is valid and names every setting."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from corral.config import Settings, load_config, parse_settings
from corral.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "corral.yaml"


def _names(model: type[BaseModel]) -> set[str]:
    names: set[str] = set()
    for name, field in model.model_fields.items():
        names.add(field.alias or name)
        for kind in typing.get_args(field.annotation) or (field.annotation,):
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                names |= _names(kind)
            for inner in typing.get_args(kind):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    names |= _names(inner)
    return names


def test_example_loads() -> None:
    settings = load_config(EXAMPLE)
    assert settings.models[0].policy.name == "cache_aware"


def test_example_mentions_every_setting() -> None:
    text = EXAMPLE.read_text()
    missing = sorted(n for n in _names(Settings) if f"{n}:" not in text)
    assert not missing, f"examples/corral.yaml does not mention {missing}"


@pytest.mark.parametrize(
    ("document", "named"),
    [
        pytest.param({"models": [{"name": "m", "polcy": {}}]}, "models.0.polcy",
                     id="typo"),
        pytest.param({"grpc": {"port": 70000}}, "grpc.port", id="range"),
        pytest.param({"health_check": {"interval_s": "often"}}, "health_check.interval_s",
                     id="type"),
        pytest.param({"models": [{"name": "m"}, {"name": "m"}]}, "appears twice",
                     id="duplicate-model"),
    ],
)
def test_bad_configuration_names_the_key(document: dict, named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings(document)
    assert named in caught.value.message


def test_admin_token_comes_from_the_environment() -> None:
    settings = parse_settings({}, environ={"CORRAL_ADMIN_TOKEN": "from-env"})
    assert settings.admin_token == "from-env"
