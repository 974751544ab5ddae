"""The ext_proc server: Envoy asks, per request, which worker serves it."""

from corral.extproc.hooks import Admission, AdmitAll, AllowAll, Release, WorkerFilter
from corral.extproc.service import ExtProcServer, grpc_server_options

__all__ = [
    "Admission",
    "AdmitAll",
    "AllowAll",
    "ExtProcServer",
    "Release",
    "WorkerFilter",
    "grpc_server_options",
]
