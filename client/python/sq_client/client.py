"""Client and Job: a small typed API over the sq.v1 service (mirrors server/client.h).

    from sq_client import Client
    with Client("127.0.0.1:50051", token="...") as c:
        job = c.submit("model.onnx", bits=4)
        for state in job.watch():
            print(state.state.name, state.progress.stage)
        job.download("model.int4.onnx")          # resumable, SHA-256 checked

Every call raises a subclass of SqError on failure (errors.py). Calls that meet
UNAVAILABLE (server not up yet, restarting, draining) are tried again with exponential
backoff per RetryPolicy; all of them are safe to repeat: uploads are content addressed,
SubmitJob carries an idempotency key (a random one when the caller gives none), watches
resume from the job's current state and downloads from the bytes already on disk.

Jobs and models are named on the wire by their sq.v1 resource names, "jobs/{job}" and
"models/{model}". Every method taking a job or a model accepts either the name or the bare
id (job_name() / model_name() turn an id into a name; a value holding a '/' is sent as it
is, and the server refuses a wrong collection with InvalidArgument).
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import (Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple,
                    TypeVar)

import grpc

from . import _wire
from ._stubs import sq_pb2, sq_pb2_grpc
from .errors import (DataLoss, FailedPrecondition, InvalidArgument, JobFailed, NotFound,
                     SqError, Unavailable, from_rpc_error)
from .model_files import LocalFile, calibration_files, model_files, validate_relative_name
from .options import QuantizeOptions

DEFAULT_TARGET = "127.0.0.1:50051"
CHUNK_BYTES = 1 << 20  # upload chunk size: below gRPC's 4 MB message limit

# (bytes done, bytes total)
ProgressFn = Callable[[int, int], None]
T = TypeVar("T")


def job_name(job: str) -> str:
    """The resource name to send for a job given by id ("jobs/<id>") or by name (unchanged)."""
    return job if "/" in job else f"jobs/{job}"


def model_name(model: str) -> str:
    """The resource name to send for a model given by id ("models/<id>") or by name."""
    return model if "/" in model else f"models/{model}"


class JobState(enum.IntEnum):
    """sq.v1.JobState."""

    UNSPECIFIED = 0
    QUEUED = 1
    RUNNING = 2
    SUCCEEDED = 3
    FAILED = 4
    CANCELLED = 5

    @property
    def is_terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)

    @classmethod
    def parse(cls, name: str) -> "JobState":
        """'succeeded' / 'SUCCEEDED' -> JobState.SUCCEEDED; InvalidArgument otherwise."""
        try:
            state = cls[name.upper()]
        except KeyError:
            state = cls.UNSPECIFIED
        if state is cls.UNSPECIFIED:
            raise InvalidArgument(
                f"job state wants queued, running, succeeded, failed or cancelled, got '{name}'")
        return state


@dataclass(frozen=True)
class RetryPolicy:
    """How calls that fail with UNAVAILABLE are repeated.

    `attempts` counts every try (1 = no retry); the waits between them grow from
    `initial_backoff` by `multiplier` up to `max_backoff` seconds. The channel's own
    reconnect backoff is bounded by the same numbers, so a server that comes up is found
    within about one wait.
    """

    attempts: int = 5
    initial_backoff: float = 0.2
    max_backoff: float = 3.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise InvalidArgument("RetryPolicy.attempts must be >= 1")
        if self.initial_backoff <= 0 or self.max_backoff < self.initial_backoff or self.multiplier < 1:
            raise InvalidArgument("RetryPolicy wants 0 < initial_backoff <= max_backoff, multiplier >= 1")

    def delays(self) -> Iterator[float]:
        """The waits before the 2nd, 3rd, ... tries (attempts - 1 of them)."""
        delay = self.initial_backoff
        for _ in range(self.attempts - 1):
            yield delay
            delay = min(delay * self.multiplier, self.max_backoff)


@dataclass(frozen=True)
class FileInfo:
    """An uploaded file or an artifact: name, size in bytes, lower-case hex SHA-256."""

    name: str
    size: int
    sha256: str

    @classmethod
    def from_proto(cls, p: Any) -> "FileInfo":
        return cls(p.name, p.size, p.sha256)


@dataclass(frozen=True)
class UploadResult:
    """UploadModelResponse: the content-addressed model id, its resource name
    ("models/<model_id>") and what the server stored."""

    model_id: str
    files: Tuple[FileInfo, ...]
    deduplicated: bool
    bytes_received: int
    name: str = ""


@dataclass(frozen=True)
class StoredModel:
    """A model the server holds (ListModels): id, files, bytes stored, last upload or submit
    (what retention counts its age from), resource name ("models/<model_id>")."""

    model_id: str
    files: Tuple[FileInfo, ...]
    size_bytes: int
    last_use_time: Optional[_dt.datetime]
    name: str = ""

    @classmethod
    def from_proto(cls, p: Any) -> "StoredModel":
        used = p.last_use_time.ToDatetime(tzinfo=_dt.timezone.utc) if p.HasField("last_use_time") else None
        return cls(p.model_id, tuple(FileInfo.from_proto(f) for f in p.files), p.size_bytes, used,
                   p.name or model_name(p.model_id))


@dataclass(frozen=True)
class DownloadResult:
    """One downloaded artifact: where it is, where the transfer started, what was received."""

    path: Path
    name: str
    size: int
    sha256: str
    resumed_from: int      # bytes already in "<path>.partial" when the (last) transfer began
    bytes_received: int    # bytes received over all tries of this call


@dataclass(frozen=True)
class Report:
    """GetReportResponse: the engine's JSON report (parsed) and its text summary."""

    data: Dict[str, Any]
    summary: str


def _timestamp(ts: Any, present: bool) -> Optional[_dt.datetime]:
    return ts.ToDatetime().replace(tzinfo=_dt.timezone.utc) if present else None


def sha256_of_file(path: "os.PathLike[str] | str") -> str:
    """Lower-case hex SHA-256 of a file's content."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Job:
    """A job on the server and the last state this client saw of it.

    The state accessors read `proto` (an sq.v1.Job); refresh(), watch(), wait() and
    cancel() update it. Job objects are cheap: any number may refer to one job.
    """

    def __init__(self, client: "Client", proto: Any) -> None:
        self._client = client
        self.proto = proto

    def __repr__(self) -> str:
        return f"Job({self.id}, {self.state.name})"

    @property
    def id(self) -> str:
        """The job id: the last segment of `name`."""
        return self.proto.job_id

    @property
    def name(self) -> str:
        """The job's resource name, "jobs/<id>": what the job RPCs are sent."""
        return self.proto.name or job_name(self.proto.job_id)

    @property
    def model_id(self) -> str:
        return self.proto.model_id

    @property
    def model(self) -> str:
        """The resource name of the model it quantizes, "models/<model_id>"."""
        return self.proto.model or model_name(self.proto.model_id)

    @property
    def state(self) -> JobState:
        return JobState(self.proto.state)

    @property
    def progress(self) -> Any:
        """sq.v1.Progress: stage, layer_index, layer_count, layer_name."""
        return self.proto.progress

    @property
    def error(self) -> Optional[Tuple[grpc.StatusCode, str]]:
        """(code, message) of a FAILED or CANCELLED job, else None."""
        if not self.proto.HasField("error") or self.proto.error.code == 0:
            return None
        code = next((c for c in grpc.StatusCode if c.value[0] == self.proto.error.code),
                    grpc.StatusCode.UNKNOWN)
        return code, self.proto.error.message

    @property
    def artifacts(self) -> List[FileInfo]:
        """SUCCEEDED only: artifacts[0] is the .onnx, the rest its external data."""
        return [FileInfo.from_proto(a) for a in self.proto.artifacts]

    @property
    def summary(self) -> Any:
        """sq.v1.JobSummary (sizes, layer counts, SQNR, bits per weight); SUCCEEDED only."""
        return self.proto.summary

    @property
    def owner(self) -> str:
        return self.proto.owner

    @property
    def create_time(self) -> Optional[_dt.datetime]:
        return _timestamp(self.proto.create_time, self.proto.HasField("create_time"))

    @property
    def end_time(self) -> Optional[_dt.datetime]:
        return _timestamp(self.proto.end_time, self.proto.HasField("end_time"))

    @property
    def done(self) -> bool:
        return self.state.is_terminal

    def refresh(self) -> "Job":
        """Reads the job's current state (GetJob); returns self."""
        self.proto = self._client.get(self.name).proto
        return self

    def watch(self, timeout: Optional[float] = None) -> Iterator["Job"]:
        """Yields a snapshot Job for every state the server reports, the current one first,
        until a terminal state (the last item). A stream cut by UNAVAILABLE is reopened
        under the client's RetryPolicy (a fresh stream starts with the current state).
        `timeout`: seconds for the whole watch (DeadlineExceeded when over); None = no limit.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        policy = self._client.retry
        delays = policy.delays()
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            stream = self._client._stub.WatchJob(
                sq_pb2.WatchJobRequest(name=self.name), metadata=self._client._metadata,
                timeout=remaining)
            try:
                for message in stream:
                    proto = message.job
                    self.proto = proto
                    delays = policy.delays()  # progress: the next failure starts afresh
                    yield Job(self._client, proto)
                    if JobState(proto.state).is_terminal:
                        stream.cancel()
                        return
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.UNAVAILABLE:
                    delay = next(delays, None)
                    if delay is not None:
                        time.sleep(delay)
                        continue
                    raise Unavailable(f"WatchJob: {e.details()} (after {policy.attempts} tries)") from None
                raise from_rpc_error(e, "WatchJob") from None
            raise SqError("WatchJob: the stream ended before a terminal state", grpc.StatusCode.INTERNAL)

    def wait(self, timeout: Optional[float] = None, check: bool = False) -> "Job":
        """Follows the job to its end; returns self. With `check`, a job that ended FAILED
        or CANCELLED raises JobFailed (its code is the job's error code)."""
        for _ in self.watch(timeout):
            pass
        if check and self.state != JobState.SUCCEEDED:
            code, message = self.error or (grpc.StatusCode.UNKNOWN, "")
            verb = "was cancelled" if self.state == JobState.CANCELLED else "failed"
            raise JobFailed(f"job {self.id} {verb}: {message}", self, code)
        return self

    def cancel(self) -> "Job":
        """Asks the server to stop the job (cooperative for a running job); returns self."""
        self.proto = self._client.cancel(self.name).proto
        return self

    def delete(self) -> None:
        """Removes a finished job and its artifacts (FailedPrecondition while it runs)."""
        self._client.delete(self.name)

    def report(self) -> Report:
        return self._client.report(self.name)

    def download(self, path: "os.PathLike[str] | str",
                 progress: Optional[ProgressFn] = None) -> List[DownloadResult]:
        """Downloads every artifact of a SUCCEEDED job: the .onnx to `path`, its external
        data files beside it under the names the model references. Each file resumes from
        "<file>.partial" and is checked against the server's SHA-256 before it is renamed
        into place. Refreshes the job first when this object has no artifacts yet.
        """
        if self.state != JobState.SUCCEEDED or not self.proto.artifacts:
            self.refresh()
        if self.state != JobState.SUCCEEDED:
            raise FailedPrecondition(f"job {self.id} is {self.state.name}; nothing to download yet")
        dest = Path(path)
        arts = self.artifacts
        total = sum(a.size for a in arts)
        before = 0
        results = []
        for i, art in enumerate(arts):
            validate_relative_name(art.name)  # never write outside dest's folder
            target = dest if i == 0 else dest.parent / art.name
            target.parent.mkdir(parents=True, exist_ok=True)
            sub = None
            if progress is not None:
                base = before
                sub = lambda done, _t, base=base: progress(base + done, total)  # noqa: E731
            results.append(self._client.download_artifact(self.name, art.name, target, sub))
            before += art.size
        return results


class Client:
    """A connection to an sq server. Thread-safe; close() (or `with`) releases the channel.

    target: "host:port". token: sent as "authorization: Bearer <token>" when set.
    tls: TLS with the system roots; tls_ca (PEM file) implies tls; tls_cert + tls_key (PEM
    files) present a client certificate (mutual TLS) and imply tls. timeout: seconds for
    each unary call. retry: what happens on UNAVAILABLE.
    """

    def __init__(self, target: str = DEFAULT_TARGET, token: Optional[str] = None, *,
                 tls: bool = False, tls_ca: Optional[str] = None,
                 tls_cert: Optional[str] = None, tls_key: Optional[str] = None,
                 timeout: float = 60.0, retry: RetryPolicy = RetryPolicy(),
                 chunk_bytes: int = CHUNK_BYTES) -> None:
        if not target:
            raise InvalidArgument("empty server address")
        if bool(tls_cert) != bool(tls_key):
            raise InvalidArgument("a client certificate needs both --tls-cert and --tls-key")
        if not 0 < chunk_bytes <= 3 << 20:
            raise InvalidArgument("chunk_bytes must be in (0, 3 MiB]")
        self.target = target
        self.retry = retry
        self.timeout = timeout
        self.chunk_bytes = chunk_bytes
        self._metadata: Tuple[Tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ())
        options = [
            ("grpc.initial_reconnect_backoff_ms", int(retry.initial_backoff * 1000)),
            ("grpc.min_reconnect_backoff_ms", int(retry.initial_backoff * 1000)),
            ("grpc.max_reconnect_backoff_ms", int(retry.max_backoff * 1000)),
        ]
        if tls or tls_ca or tls_cert:
            def read(what: str, p: Optional[str]) -> Optional[bytes]:
                if not p:
                    return None
                try:
                    return Path(p).read_bytes()
                except OSError as e:
                    raise InvalidArgument(f"cannot read {what} {p}: {e.strerror}") from None
            creds = grpc.ssl_channel_credentials(
                root_certificates=read("CA file", tls_ca),
                private_key=read("client key", tls_key),
                certificate_chain=read("client certificate", tls_cert))
            self._channel = grpc.secure_channel(target, creds, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._stub = sq_pb2_grpc.SqServiceStub(self._channel)

    # -- lifecycle --------------------------------------------------------------------
    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------------------
    def _retrying(self, what: str, call: Callable[[], T]) -> T:
        """Runs `call`, repeating it on UNAVAILABLE per the policy; typed errors out."""
        delays = self.retry.delays()
        while True:
            try:
                return call()
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.UNAVAILABLE:
                    delay = next(delays, None)
                    if delay is not None:
                        time.sleep(delay)
                        continue
                    raise Unavailable(f"{what}: {e.details()} (server {self.target}, "
                                      f"{self.retry.attempts} tries)") from None
                raise from_rpc_error(e, what) from None

    def _unary(self, method: str, request: Any, timeout: Optional[float] = None) -> Any:
        rpc = getattr(self._stub, method)
        return self._retrying(method, lambda: rpc(request, metadata=self._metadata,
                                                  timeout=timeout or self.timeout))

    # -- models -----------------------------------------------------------------------
    def upload(self, path: "os.PathLike[str] | str", extra_files: Sequence[LocalFile] = (),
               progress: Optional[ProgressFn] = None) -> UploadResult:
        """Uploads a model with the external data files it references (model_files) and
        `extra_files` (e.g. verification inputs) after them."""
        files = model_files(path)
        names = {f.name for f in files}
        for extra in extra_files:
            if extra.name in names:
                raise InvalidArgument(f"{extra.path} has the name of a file of the model ({extra.name}); rename it")
            names.add(extra.name)
        return self.upload_files(files + list(extra_files), progress=progress)

    def upload_files(self, files: Sequence[LocalFile], progress: Optional[ProgressFn] = None,
                     send_hashes: bool = True) -> UploadResult:
        """Uploads `files` (files[0] the .onnx) as one model. With `send_hashes` the header
        declares each file's SHA-256, so the server can skip a model it already has."""
        if not files:
            raise InvalidArgument("nothing to upload")
        header = sq_pb2.UploadHeader()
        total = 0
        for f in files:
            try:
                size = os.stat(f.path).st_size
            except OSError:
                raise NotFound(f"cannot read {f.path}") from None
            header.files.add(name=f.name, size=size,
                             sha256=sha256_of_file(f.path) if send_hashes else "")
            total += size

        def requests() -> Iterator[Any]:
            yield sq_pb2.UploadModelRequest(header=header)
            done = 0
            for f in files:
                with open(f.path, "rb") as src:
                    for chunk in iter(lambda: src.read(self.chunk_bytes), b""):
                        yield sq_pb2.UploadModelRequest(chunk=chunk)
                        done += len(chunk)
                        if progress is not None:
                            progress(done, total)

        response = self._retrying("UploadModel", lambda: self._stub.UploadModel(
            requests(), metadata=self._metadata))
        if progress is not None:
            progress(total, total)
        return UploadResult(response.model_id,
                            tuple(FileInfo.from_proto(f) for f in response.files),
                            response.deduplicated, response.bytes_received,
                            response.name or model_name(response.model_id))

    def inspect(self, model: str) -> Any:
        """sq.v1.InspectModelResponse of an uploaded model, given by id or by name (ops,
        layers, size estimates)."""
        return self._unary("InspectModel", sq_pb2.InspectModelRequest(name=model_name(model)))

    # -- jobs -------------------------------------------------------------------------
    def submit(self, path: "os.PathLike[str] | str", bits: Optional[int] = 4, *,
               options: Optional[QuantizeOptions] = None,
               verify_input: "os.PathLike[str] | str | None" = None,
               calibration: "Sequence[os.PathLike[str] | str]" = (),
               idempotency_key: Optional[str] = None,
               progress: Optional[ProgressFn] = None, **fields: Any) -> Job:
        """Uploads the model at `path` (with its external data) and queues a job.

        Options: `options`, or QuantizeOptions fields as keywords (granularity="block",
        target="qdq", ...), not both. `bits` applies unless `options` sets bits (None =
        the server's default). `verify_input`: a local .npy/.npz/.pb file uploaded with the
        model and named in options.verify_input. `calibration`: local calibration samples
        (.npy/.npz/.pb files, or directories of them: their files in name order; a
        subdirectory is refused), uploaded with the model and named in
        options.calibration_inputs. Returns the QUEUED job; ResourceExhausted when the
        server's queue is full.
        """
        if options is not None and fields:
            raise InvalidArgument("give QuantizeOptions or option keywords, not both")
        try:
            opts = options if options is not None else QuantizeOptions(**fields)
        except TypeError as e:
            raise InvalidArgument(f"unknown option: {e}") from None
        if opts.bits is None and bits is not None:
            opts = _replace(opts, bits=bits)
        extra: List[LocalFile] = []
        if verify_input is not None:
            vi = Path(verify_input)
            if not vi.is_file():
                raise NotFound(f"verification input {vi} does not exist")
            extra.append(LocalFile(vi, vi.name))
            opts = _replace(opts, verify_input=vi.name)
        if isinstance(calibration, (str, os.PathLike)):
            calibration = (calibration,)
        names: List[str] = []
        for f in calibration_files(calibration):
            same = [e for e in extra if e.name == f.name]
            if same and not os.path.samefile(same[0].path, f.path):
                raise InvalidArgument(f"calibration input {f.path}: its name {f.name} is taken by "
                                      f"{same[0].path} in the same upload; rename one")
            if not same:
                extra.append(f)
            names.append(f.name)
        if names:
            opts = _replace(opts, calibration_inputs=tuple(opts.calibration_inputs) + tuple(names))
        upload = self.upload(path, extra, progress)
        return self.submit_model(upload.name, opts, idempotency_key)

    def submit_model(self, model: str, options: QuantizeOptions = QuantizeOptions(),
                     idempotency_key: Optional[str] = None) -> Job:
        """Queues a job for an uploaded model, given by id or by name. Without
        `idempotency_key` a random one is sent, so a retry after UNAVAILABLE cannot create a
        second job."""
        request = sq_pb2.SubmitJobRequest(model=model_name(model), options=options.to_proto(),
                                          idempotency_key=idempotency_key or uuid.uuid4().hex)
        return Job(self, self._unary("SubmitJob", request).job)

    def get(self, job: str) -> Job:
        """The job given by id or by name, as it is now."""
        return Job(self, self._unary("GetJob", sq_pb2.GetJobRequest(name=job_name(job))).job)

    def job(self, job: str) -> Job:
        """A handle on an existing job, by id or by name (reads its state once)."""
        return self.get(job)

    def list_jobs(self, states: Iterable[JobState] = (), limit: int = 0,
                  page_size: int = 0) -> List[Job]:
        """Jobs this token may see, newest first, following pages. `states` filters;
        `limit` > 0 stops after that many; `page_size` 0 = the server's default."""
        request = sq_pb2.ListJobsRequest(states=[int(s) for s in states], page_size=page_size)
        jobs: List[Job] = []
        while True:
            response = self._unary("ListJobs", request)
            for p in response.jobs:
                if limit > 0 and len(jobs) >= limit:
                    return jobs
                jobs.append(Job(self, p))
            if not response.next_page_token or (limit > 0 and len(jobs) >= limit):
                return jobs
            request.page_token = response.next_page_token

    def cancel(self, job: str) -> Job:
        return Job(self, self._unary("CancelJob", sq_pb2.CancelJobRequest(name=job_name(job))).job)

    def delete(self, job: str) -> None:
        self._unary("DeleteJob", sq_pb2.DeleteJobRequest(name=job_name(job)))

    def list_models(self, limit: int = 0, page_size: int = 0) -> List[StoredModel]:
        """Stored models this token may use (under per-tenant tokens: those it uploaded), by
        id, following pages. `limit` > 0 stops after that many."""
        request = sq_pb2.ListModelsRequest(page_size=page_size)
        models: List[StoredModel] = []
        while True:
            response = self._unary("ListModels", request)
            for p in response.models:
                if limit > 0 and len(models) >= limit:
                    return models
                models.append(StoredModel.from_proto(p))
            if not response.next_page_token or (limit > 0 and len(models) >= limit):
                return models
            request.page_token = response.next_page_token

    def delete_model(self, model: str) -> None:
        """Removes an uploaded model; finished jobs keep their artifacts. FailedPrecondition
        while a queued or running job of the caller uses it, NotFound when it is not stored
        (or, under per-tenant tokens, not the caller's)."""
        self._unary("DeleteModel", sq_pb2.DeleteModelRequest(name=model_name(model)))

    def report(self, job: str) -> Report:
        r = self._unary("GetReport", sq_pb2.GetReportRequest(name=job_name(job)))
        try:
            data = json.loads(r.json) if r.json else {}
        except json.JSONDecodeError as e:
            raise SqError(f"GetReport: the report is not JSON ({e})", grpc.StatusCode.INTERNAL) from None
        return Report(data, r.summary)

    # -- artifacts --------------------------------------------------------------------
    def download_artifact(self, job: str, name: str, dest: "os.PathLike[str] | str",
                          progress: Optional[ProgressFn] = None) -> DownloadResult:
        """One artifact of a job (by id or by name) into `dest` through "<dest>.partial";
        `name` is an artifact's file name, "" = the .onnx.

        An existing partial file is resumed (the request asks from its size). A stream cut
        by UNAVAILABLE is resumed under the RetryPolicy. A partial longer than the artifact
        (OUT_OF_RANGE) is discarded and the download starts over once. When all bytes are
        there the file's SHA-256 must equal the server's: on a mismatch the partial file is
        removed and DataLoss raised (run again); on a match it is renamed to `dest`.
        """
        dest = Path(dest)
        partial = dest.with_name(dest.name + ".partial")
        delays = self.retry.delays()
        restarted = False
        received = 0
        while True:
            offset = partial.stat().st_size if partial.exists() else 0
            request = sq_pb2.DownloadArtifactRequest(job=job_name(job), artifact=name, offset=offset)
            info = None
            position = offset
            try:
                stream = self._stub.DownloadArtifact(request, metadata=self._metadata)
                with open(partial, "ab" if offset else "wb") as out:
                    for chunk in stream:
                        if chunk.HasField("file"):
                            info = FileInfo.from_proto(chunk.file)
                        if chunk.offset != position:
                            stream.cancel()
                            raise DataLoss(f"DownloadArtifact: stream out of order (offset "
                                           f"{chunk.offset}, expected {position})")
                        out.write(chunk.data)
                        position += len(chunk.data)
                        received += len(chunk.data)
                        if progress is not None and info is not None:
                            progress(position, info.size)
            except grpc.RpcError as e:
                code = e.code()
                if code == grpc.StatusCode.UNAVAILABLE:
                    delay = next(delays, None)
                    if delay is not None:
                        time.sleep(delay)
                        continue
                    raise Unavailable(f"DownloadArtifact: {e.details()} (after "
                                      f"{self.retry.attempts} tries; run again to resume)") from None
                if code == grpc.StatusCode.OUT_OF_RANGE and offset > 0 and not restarted:
                    partial.unlink(missing_ok=True)  # stale: longer than the artifact
                    restarted = True
                    continue
                raise from_rpc_error(e, "DownloadArtifact") from None
            except OSError as e:
                raise SqError(f"cannot write {partial}: {e.strerror}", grpc.StatusCode.INTERNAL) from None
            break
        if info is None:
            raise DataLoss(f"DownloadArtifact: the server sent no file header for {name or 'the model'}")
        if position != info.size:
            raise DataLoss(f"download of {info.name} ended at {position} of {info.size} bytes; "
                           "run again to resume")
        digest = sha256_of_file(partial)
        if digest != info.sha256:
            partial.unlink(missing_ok=True)
            raise DataLoss(f"downloaded {info.name} does not match its sha256 {info.sha256} "
                           f"(got {digest}); removed, run again")
        os.replace(partial, dest)
        return DownloadResult(dest, info.name, info.size, info.sha256, offset, received)

    # -- health -----------------------------------------------------------------------
    def health(self, service: str = "", timeout: float = 10.0) -> bool:
        """grpc.health.v1 Check of the whole server ("") or of one service
        ("sq.v1.SqService"): True when SERVING. Retried on UNAVAILABLE like every call."""
        check = self._channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=lambda s: _wire.encode_len(1, s.encode()) if s else b"",
            response_deserializer=_health_status)
        status = self._retrying("Health.Check", lambda: check(
            service, metadata=self._metadata, timeout=timeout))
        return status == 1  # HealthCheckResponse.SERVING


def _health_status(data: bytes) -> int:
    """HealthCheckResponse.status (field 1, an enum); 0 UNKNOWN when absent."""
    status = 0
    for number, wire, value in _wire.fields(memoryview(data)):
        if number == 1 and wire == _wire.VARINT:
            status = int(value)  # type: ignore[arg-type]
    return status


def _replace(options: QuantizeOptions, **changes: Any) -> QuantizeOptions:
    return dataclasses.replace(options, **changes)
