"""The one exception family of Corral, and the HTTP status each member means.

    GatewayError                    500 internal_error
    ├── InvalidRequest              400 invalid_request_error
    │   └── MissingModel            400 (param "model")
    ├── Unauthorized                401 authentication_error
    ├── ModelNotFound               404 model_not_found
    ├── NotFound                    404 not_found_error
    ├── PayloadTooLarge             413 request_too_large
    ├── RateLimited                 429 rate_limit_exceeded (carries Retry-After)
    ├── ServiceUnavailable          503 service_unavailable (may carry Retry-After)
    │   └── NoHealthyWorker         503 no_healthy_worker
    └── ConfigError                 raised at start-up only, never on a request

Code below the boundaries raises these; each boundary translates them exactly
once: ext_proc into an Envoy immediate response, the admin API into an HTTP answer,
the command line into a message and an exit status.
"""

from __future__ import annotations

import json
from typing import Any


class GatewayError(Exception):
    """Base of every error Corral raises on purpose."""

    status: int = 500
    error_type: str = "internal_error"
    code: str | None = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.retry_after_s = retry_after_s

    def to_openai(self) -> dict[str, Any]:
        """The error as OpenAI's API returns it: ``{"error": {...}}``."""
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }

    def to_anthropic(self) -> dict[str, Any]:
        """The error as Anthropic's Messages API returns it, for clients of
        ``/v1/messages``: ``{"type": "error", "error": {"type", "message"}}``."""
        kind = ANTHROPIC_ERROR_TYPES.get(self.status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": self.message}}

    def body(self, *, dialect: str = "openai") -> bytes:
        """The JSON body in the API dialect of the request (``openai`` or
        ``anthropic``)."""
        document = self.to_anthropic() if dialect == "anthropic" else self.to_openai()
        return json.dumps(document, separators=(",", ":")).encode()

    def headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if self.retry_after_s is not None:
            headers["retry-after"] = str(self.retry_after_s)
        return headers


ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    529: "overloaded_error",
}
"""Anthropic's error types by HTTP status (https://docs.anthropic.com/en/api/errors)."""


class InvalidRequest(GatewayError):
    status = 400
    error_type = "invalid_request_error"
    code = "invalid_request"


class MissingModel(InvalidRequest):
    code = "missing_required_parameter"

    def __init__(self) -> None:
        super().__init__("you must provide a model parameter", param="model")


class Unauthorized(GatewayError):
    status = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class ModelNotFound(GatewayError):
    status = 404
    error_type = "invalid_request_error"
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(f"The model `{model}` does not exist.", param="model")


class NotFound(GatewayError):
    status = 404
    error_type = "invalid_request_error"
    code = "not_found"


class PayloadTooLarge(GatewayError):
    status = 413
    error_type = "invalid_request_error"
    code = "request_too_large"


class RateLimited(GatewayError):
    status = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"


class ServiceUnavailable(GatewayError):
    status = 503
    error_type = "service_unavailable"
    code = "service_unavailable"


class NoHealthyWorker(ServiceUnavailable):
    code = "no_healthy_worker"


class ConfigError(GatewayError):
    """A configuration that cannot be used; raised at start-up and on reloads."""

    code = "invalid_configuration"
