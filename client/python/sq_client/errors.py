"""Typed errors: every failure of a call is an SqError carrying the gRPC status code.

A subclass per code the service documents (docs/api.md) lets callers catch what they can
act on: `except sq_client.Unavailable`, `except sq_client.InvalidArgument`, ...
Local problems use the same classes (a model file that does not exist is NotFound, a bad
option name is InvalidArgument), so one `except SqError` covers a whole call.
"""
from __future__ import annotations

from typing import Dict, Optional, Type

import grpc


class SqError(Exception):
    """A failed call. `code` is the gRPC status code, `message` the server's (or our) text."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, code: Optional[grpc.StatusCode] = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


class InvalidArgument(SqError, ValueError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(SqError):
    code = grpc.StatusCode.NOT_FOUND


class Unauthenticated(SqError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(SqError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unavailable(SqError):
    code = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(SqError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(SqError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class DeadlineExceeded(SqError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class OutOfRange(SqError):
    code = grpc.StatusCode.OUT_OF_RANGE


class Cancelled(SqError):
    code = grpc.StatusCode.CANCELLED


class DataLoss(SqError):
    """A download that does not match the server's size or SHA-256."""

    code = grpc.StatusCode.DATA_LOSS


class Internal(SqError):
    code = grpc.StatusCode.INTERNAL


class JobFailed(SqError):
    """Job.wait(check=True) on a job that ended FAILED or CANCELLED; `job` is its last state."""

    def __init__(self, message: str, job: object, code: grpc.StatusCode) -> None:
        super().__init__(message, code)
        self.job = job


_BY_CODE: Dict[grpc.StatusCode, Type[SqError]] = {
    cls.code: cls
    for cls in (InvalidArgument, NotFound, Unauthenticated, PermissionDenied, Unavailable,
                ResourceExhausted, FailedPrecondition, DeadlineExceeded, OutOfRange, Cancelled,
                DataLoss, Internal)
}


def error_for(code: grpc.StatusCode, message: str) -> SqError:
    """The SqError subclass for `code` (SqError itself for codes without one)."""
    cls = _BY_CODE.get(code)
    return cls(message) if cls is not None else SqError(message, code)


def from_rpc_error(error: grpc.RpcError, what: str) -> SqError:
    """Converts a grpc.RpcError raised by `what` (e.g. "SubmitJob") into a typed SqError."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    return error_for(code, f"{what}: {details or code.name}")
