"""Typed settings, read once from the YAML configuration file."""

from corral.config.settings import (
    Address,
    ModelConfig,
    PolicyConfig,
    Settings,
    StaticWorker,
    load_config,
    parse_settings,
)

__all__ = [
    "Address",
    "ModelConfig",
    "PolicyConfig",
    "Settings",
    "StaticWorker",
    "load_config",
    "parse_settings",
]
