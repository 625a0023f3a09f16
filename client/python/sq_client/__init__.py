"""sq_client: a Python client for the sq quantization service (gRPC sq.v1).

    from sq_client import Client
    with Client("127.0.0.1:50051", token=None) as client:
        job = client.submit("model.onnx", bits=4)
        for snapshot in job.watch():
            print(snapshot.state.name)
        job.download("model.int4.onnx")

`python3 -m sq_client --help` is the command-line client (the commands of sqctl). The
sq.v1 stubs are generated at build time (see client/python/README.md).
"""
from .client import (Client, DownloadResult, FileInfo, Job, JobState, Report, RetryPolicy, StoredModel,
                     UploadResult, job_name, model_name, sha256_of_file)
from .errors import (Cancelled, DataLoss, DeadlineExceeded, FailedPrecondition, Internal,
                     InvalidArgument, JobFailed, NotFound, OutOfRange, PermissionDenied,
                     ResourceExhausted, SqError, Unauthenticated, Unavailable)
from .model_files import LocalFile, model_files
from .options import QuantizeOptions

__all__ = [
    "Client", "DownloadResult", "FileInfo", "Job", "JobState", "Report", "RetryPolicy",
    "StoredModel", "UploadResult", "job_name", "model_name", "sha256_of_file", "LocalFile", "model_files", "QuantizeOptions",
    "SqError", "Cancelled", "DataLoss", "DeadlineExceeded", "FailedPrecondition", "Internal",
    "InvalidArgument", "JobFailed", "NotFound", "OutOfRange", "PermissionDenied",
    "ResourceExhausted", "Unauthenticated", "Unavailable",
]
