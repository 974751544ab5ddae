"""Checks of a configuration that need more than its schema, run by every
command before it starts anything: each pool's routing policy must build (its
name registered, its parameters known and in range) and a tokenizer named by a
path must exist. Hub ids are left to load time, which may be offline."""

from __future__ import annotations

from pathlib import Path

from corral.config import Settings
from corral.errors import ConfigError
from corral.routing import build_policy
from corral.tokenizer import BUILTIN_NAME


def check_settings(settings: Settings) -> None:
    """Raise ``ConfigError`` naming the first model whose settings cannot work."""
    for index, model in enumerate(settings.models):
        where = f"models.{index} ({model.name})"
        try:
            build_policy(model.policy)
        except ConfigError as exc:
            raise ConfigError(f"{where}.policy: {exc.message}") from None
        spec = model.tokenizer
        looks_like_path = spec.startswith(("/", ".", "~")) or spec.count("/") > 1
        if (
            spec != BUILTIN_NAME
            and looks_like_path
            and not Path(spec).expanduser().exists()
        ):
            raise ConfigError(f"{where}.tokenizer: no such file or folder: {spec}")
    if (
        settings.default_model is not None
        and settings.model(settings.default_model) is None
    ):
        raise ConfigError(
            f"default_model: {settings.default_model!r} is not one of the models"
        )
