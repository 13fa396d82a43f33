"""smartspec's error hierarchy; each class carries its HTTP status and gRPC code, mapped here once."""

from __future__ import annotations


class SmartspecError(Exception):
    """Base of every error smartspec raises on purpose.

    `http_status` and `grpc_code` (a `grpc.StatusCode` member name) are the single mapping the
    HTTP and gRPC front ends use; anything that is not a `SmartspecError` is an internal error.
    """

    http_status: int = 500
    grpc_code: str = "INTERNAL"
    error_type: str = "internal_error"
    retry_after_s: int | None = None  # set where retrying later can succeed (HTTP `Retry-After`)

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidRequest(SmartspecError):
    """The request itself is wrong (empty prompt, bad sampling parameter, too long)."""

    http_status = 400
    grpc_code = "INVALID_ARGUMENT"
    error_type = "invalid_request_error"


class ModelNotFound(SmartspecError):
    """A model path or name does not resolve to a loadable model."""

    http_status = 404
    grpc_code = "NOT_FOUND"
    error_type = "model_not_found"


class UnknownSequence(SmartspecError):
    """A sequence id that the engine does not hold (finished, cancelled or never admitted)."""

    http_status = 404
    grpc_code = "NOT_FOUND"
    error_type = "not_found_error"


class IncompatibleModels(SmartspecError):
    """Draft and target cannot be paired (tokenizer or vocabulary mismatch)."""

    http_status = 422
    grpc_code = "FAILED_PRECONDITION"
    error_type = "incompatible_models"


class UnsupportedModel(SmartspecError):
    """The model loads, but uses a feature the engine does not implement (e.g. sliding windows)."""

    http_status = 422
    grpc_code = "FAILED_PRECONDITION"
    error_type = "unsupported_model"


class CapacityExceeded(SmartspecError):
    """No free KV slot or token budget right now; the client should retry later."""

    http_status = 429
    grpc_code = "RESOURCE_EXHAUSTED"
    error_type = "capacity_exceeded"
    retry_after_s = 1


class ResourceShortage(SmartspecError):
    """The machine lacks disk or memory for an operation (model fetch, conversion, load)."""

    http_status = 507
    grpc_code = "RESOURCE_EXHAUSTED"
    error_type = "insufficient_storage"


class FetchFailed(SmartspecError):
    """Downloading or checking model artefacts failed (network, checksum)."""

    http_status = 502
    grpc_code = "UNAVAILABLE"
    error_type = "fetch_failed"
