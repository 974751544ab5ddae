"""Fixtures for discovery tests."""

from __future__ import annotations

from tests.unit.discovery.fake_worker import fake_worker

__all__ = ["fake_worker"]
