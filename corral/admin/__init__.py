"""The admin HTTP API: workers, metrics, liveness and readiness."""

from corral.admin.app import (
    ADMIN_SOURCE,
    AdminServer,
    Readiness,
    build_admin_app,
    start_admin,
)

__all__ = ["ADMIN_SOURCE", "AdminServer", "Readiness", "build_admin_app", "start_admin"]
