"""Logging set-up, done once at each entry point.

Levels: TRACE (5) dumps protocol messages, DEBUG is per request, INFO is
lifecycle and membership changes. ``json=True`` writes one JSON object a line.
A filter masks credentials (bearer tokens, API keys) wherever they appear.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

TRACE = 5
logging.addLevelName(TRACE, "TRACE")

_SECRET = re.compile(
    r"(?i)(bearer\s+|api[_-]?key[\"'=:\s]+|token[\"'=:\s]+|authorization[\"'=:\s]+)"
    r"([A-Za-z0-9._~+/=-]{4,})"
)


def redact(text: str) -> str:
    """Replace credentials in ``text`` with ``***``."""
    return _SECRET.sub(lambda m: m.group(1) + "***", text)


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str = "INFO", *, json_format: bool = False) -> None:
    """Install one stderr handler on the root logger (idempotent)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_corral", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._corral = True  # type: ignore[attr-defined]
    handler.addFilter(RedactingFilter())
    if json_format:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-5s %(name)s: %(message)s")
        )
    root.addHandler(handler)
    root.setLevel(TRACE if level.upper() == "TRACE" else level.upper())
    # Third-party chatter stays at WARNING unless TRACE is asked for.
    for noisy in ("aiohttp.access", "asyncio", "grpc", "kubernetes_asyncio"):
        logging.getLogger(noisy).setLevel(
            logging.DEBUG if level.upper() == "TRACE" else logging.WARNING
        )
