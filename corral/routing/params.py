"""Validation of a policy's ``params`` mapping, with errors that name the key.

Every policy factory reads its parameters through a ``ParamReader``; once it has
read the ones it knows, ``finish()`` rejects anything left over, so a misspelt
key in the configuration file fails at start-up instead of being ignored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from corral.errors import ConfigError


class ParamReader:
    """Typed access to one policy's parameters; every error is a ``ConfigError``
    whose message names the policy and the key, and whose ``param`` is the key."""

    def __init__(self, policy: str, params: Mapping[str, Any] | None) -> None:
        if params is None:
            params = {}
        if not isinstance(params, Mapping):
            raise ConfigError(
                f"routing policy {policy!r}: params must be a mapping, "
                f"got {type(params).__name__}",
                param="params",
            )
        self.policy = policy
        self._params = dict(params)
        self._read: set[str] = set()

    def _fail(self, key: str, expected: str) -> ConfigError:
        value = self._params.get(key)
        return ConfigError(
            f"routing policy {self.policy!r}: parameter {key!r} must be {expected}, "
            f"got {value!r}",
            param=key,
        )

    def _take(self, key: str) -> Any:
        self._read.add(key)
        return self._params.get(key)

    def number(
        self,
        key: str,
        default: float,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
        above: float | None = None,
    ) -> float:
        """A finite real number (bools refused) within the given bounds."""
        value = self._take(key)
        if value is None:
            return float(default)
        expected = _bounds_text("a number", minimum, maximum, above)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._fail(key, expected)
        number = float(value)
        if not math.isfinite(number) or not _within(number, minimum, maximum, above):
            raise self._fail(key, expected)
        return number

    def integer(
        self,
        key: str,
        default: int,
        *,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> int:
        """An integer (bools and floats refused) within the given bounds."""
        value = self._take(key)
        if value is None:
            return default
        expected = _bounds_text("an integer", minimum, maximum, None)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._fail(key, expected)
        if not _within(value, minimum, maximum, None):
            raise self._fail(key, expected)
        return value

    def optional_integer(self, key: str) -> int | None:
        value = self._take(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._fail(key, "an integer")
        return value

    def string(self, key: str, default: str) -> str:
        """A non-empty string."""
        value = self._take(key)
        if value is None:
            return default
        if not isinstance(value, str) or not value.strip():
            raise self._fail(key, "a non-empty string")
        return value.strip()

    def finish(self) -> None:
        """Refuse any key the policy did not read."""
        unknown = sorted(str(k) for k in self._params if k not in self._read)
        if unknown:
            known = ", ".join(sorted(self._read)) or "none"
            raise ConfigError(
                f"routing policy {self.policy!r}: unknown parameter {unknown[0]!r} "
                f"(known: {known})",
                param=unknown[0],
            )


def _within(
    value: float, minimum: float | None, maximum: float | None, above: float | None
) -> bool:
    if minimum is not None and value < minimum:
        return False
    if maximum is not None and value > maximum:
        return False
    return above is None or value > above


def _bounds_text(
    kind: str, minimum: float | None, maximum: float | None, above: float | None
) -> str:
    parts = [kind]
    if above is not None:
        parts.append(f"> {above:g}")
    if minimum is not None:
        parts.append(f">= {minimum:g}")
    if maximum is not None:
        parts.append(f"<= {maximum:g}")
    return " ".join(parts)
