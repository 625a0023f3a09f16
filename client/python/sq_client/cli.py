"""The command-line client: sqctl's remote commands, in Python.

    python3 -m sq_client submit model.onnx --bits 4 -o model.int4.onnx
    python3 -m sq_client status|get JOB | watch JOB | list [--state S] [--limit N]
    python3 -m sq_client cancel JOB | delete JOB | download JOB -o F | report JOB
    python3 -m sq_client inspect model.onnx | health

JOB is a job id or its resource name jobs/ID; MODEL_ID a model id or models/ID.

Flags, output and exit codes follow sqctl (docs/api.md, "sqctl remote commands"):
0 ok, 1 job failed/cancelled or not finished, 2 usage or INVALID_ARGUMENT/OUT_OF_RANGE,
3 server unavailable/overloaded/NOT_SERVING, 4 not found, 5 authentication.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable, Iterator, List, NoReturn, Optional, Sequence

import grpc
from google.protobuf import json_format

from .client import DEFAULT_TARGET, Client, Job, JobState, ProgressFn
from .errors import DeadlineExceeded, FailedPrecondition, InvalidArgument, SqError
from .options import (ACTIVATION_SPLITS, ACTIVATIONS, CALIBRATION_METHODS, CLUSTER_SCOPES, FORMATS,
                      FORMS, GRANULARITIES, ROUNDINGS, SCALE_TYPES, SPLIT_MODES, TARGETS, QuantizeOptions)

# A job on the command line: its id (as submit prints it) or its resource name.
JOB_HELP = "the job's id (as submit prints it), or its resource name jobs/ID"
EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_NOT_FOUND, EXIT_AUTH = 0, 1, 2, 3, 4, 5
PROG = "sq_client"


def exit_code_for(code: grpc.StatusCode) -> int:
    """sqctl's mapping of a status code to an exit code (client/remote_commands.cc)."""
    if code == grpc.StatusCode.OK:
        return EXIT_OK
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return EXIT_AUTH
    if code == grpc.StatusCode.NOT_FOUND:
        return EXIT_NOT_FOUND
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE):
        return EXIT_USAGE
    if code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.CANCELLED,
                grpc.StatusCode.ABORTED):
        return EXIT_JOB_FAILED
    return EXIT_UNAVAILABLE


_WHAT = {grpc.StatusCode.UNAVAILABLE: "server unavailable",
         grpc.StatusCode.UNAUTHENTICATED: "not authenticated",
         grpc.StatusCode.NOT_FOUND: "not found",
         grpc.StatusCode.RESOURCE_EXHAUSTED: "server at capacity",
         grpc.StatusCode.DEADLINE_EXCEEDED: "timed out"}


def fail(error: SqError) -> int:
    """One line on stderr, the exit code for the error's status code."""
    msg = error.message
    what = _WHAT.get(error.code)
    if what and what not in msg:
        msg = f"{what}: {msg}"
    print(f"{PROG}: {msg}", file=sys.stderr)
    return exit_code_for(error.code)


def to_json(message: object) -> str:
    """JSON with the proto field names and every field present (stable keys, as sqctl)."""
    return json_format.MessageToJson(message, including_default_value_fields=True,
                                     preserving_proto_field_name=True, indent=2)


def human(n: int) -> str:
    v, u = float(n), 0
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    while v >= 1024 and u < 4:
        v /= 1024
        u += 1
    return f"{v:.0f} {units[u]}" if u == 0 else f"{v:.1f} {units[u]}"


def progress_line(job: Job) -> str:
    s = job.state.name
    if job.state == JobState.RUNNING:
        s += f" {job.progress.stage}"
        if job.progress.layer_count > 0:
            s += f" {job.progress.layer_index}/{job.progress.layer_count}"
    return s


def print_job(job: Job) -> None:
    created = job.create_time.isoformat() if job.create_time else ""
    print(f"job       {job.id}\nstate     {progress_line(job)}\nmodel     {job.model_id}\n"
          f"created   {created}")
    if job.end_time:
        print(f"ended     {job.end_time.isoformat()}")
    if job.error:
        print(f"error     {job.error[1]}")
    if job.state == JobState.SUCCEEDED:
        s = job.summary
        print(f"size      {human(s.input_bytes)} -> {human(s.output_bytes)} ({s.compression_ratio:.2f}x)\n"
              f"layers    {s.layers_found} found, {s.layers_quantized} quantized, {s.layers_split} split\n"
              f"sqnr      {s.mean_sqnr_plain_db:.2f} dB plain, {s.mean_sqnr_split_db:.2f} dB split (mean)\n"
              f"bpw       {s.quantized_bits_per_weight:.2f} stored bits per weight in the quantized "
              f"layers, {s.artifact_bits_per_weight:.2f} over the artifact")
        for a in job.artifacts:
            print(f"artifact  {a.name} ({human(a.size)}, sha256 {a.sha256})")


def bar(label: str, quiet: bool) -> Optional[ProgressFn]:
    """A progress bar on stderr, only when stderr is a terminal."""
    if quiet or not sys.stderr.isatty():
        return None

    def show(done: int, total: int) -> None:
        pct = 100 * done // total if total > 0 else 100
        filled = pct * 30 // 100
        sys.stderr.write(f"\r{label:<9} [{'#' * filled}{'.' * (30 - filled)}] {pct:3d}% "
                         f"{human(done)} / {human(total)}\033[K")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()
    return show


def _duration(text: str) -> float:
    """--timeout: seconds ("90", "2.5") or a number with s, m or h ("90s", "10m", "1h")."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    t = text.strip().lower()
    scale = units.get(t[-1:], None)
    try:
        value = float(t[:-1] if scale else t) * (scale or 1.0)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"--timeout wants a duration such as 90s or 10m, got {text!r}")
    return value


def follow(job: Job, quiet: bool, timeout: Optional[float] = None) -> Job:
    """Watches to the end, printing each state change on stderr (one line per change when
    stderr is not a terminal; per-layer progress only on a terminal). Past `timeout`
    seconds: DeadlineExceeded saying the job goes on."""
    tty = sys.stderr.isatty()
    last = ""
    try:
        for snap in _watch_lines(job, timeout):
            if quiet:
                continue
            line = progress_line(snap)
            if line == last:
                continue
            last = line
            if tty:
                sys.stderr.write(f"\r{line}\033[K" + ("\n" if snap.done else ""))
            elif not (snap.state == JobState.RUNNING and snap.progress.layer_count > 0
                      and snap.progress.stage == "transform"):
                sys.stderr.write(line + "\n")
            sys.stderr.flush()
    except DeadlineExceeded:
        raise DeadlineExceeded(f"job {job.id} did not finish within --timeout; it goes on on the "
                               f"server (python3 -m sq_client watch {job.id})") from None
    return job


def _watch_lines(job: Job, timeout: Optional[float]) -> Iterator[Job]:
    """job.watch() with the CLI's timeout (0 or None = no limit)."""
    return job.watch(timeout or None)


def job_outcome(job: Job) -> int:
    if job.state == JobState.SUCCEEDED:
        return EXIT_OK
    verb = "was cancelled" if job.state == JobState.CANCELLED else "failed"
    message = job.error[1] if job.error else ""
    print(f"{PROG}: job {job.id} {verb}: {message}", file=sys.stderr)
    return EXIT_JOB_FAILED


# ---- argument parsing ------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """argparse with sqctl's usage exit code (2) and one-line error format."""

    def error(self, message: str) -> NoReturn:
        print(f"{PROG}: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _int_in(lo: int, hi: int) -> Callable[[str], int]:
    def parse(v: str) -> int:
        try:
            n = int(v)
        except ValueError:
            n = lo - 1
        if not lo <= n <= hi:
            raise argparse.ArgumentTypeError(f"wants an integer in [{lo}, {hi}], got '{v}'")
        return n
    return parse


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("connection")
    g.add_argument("--server", default=os.environ.get("SQ_SERVER") or DEFAULT_TARGET,
                   help="HOST:PORT (default $SQ_SERVER, else %(default)s)")
    g.add_argument("--token", default=os.environ.get("SQ_TOKEN", ""), help="bearer token (default $SQ_TOKEN)")
    g.add_argument("--tls", action="store_true", help="TLS with the system roots")
    g.add_argument("--tls-ca", metavar="FILE", help="PEM CA bundle (implies --tls)")
    g.add_argument("--tls-cert", metavar="FILE", help="client certificate (mutual TLS)")
    g.add_argument("--tls-key", metavar="FILE", help="client key (mutual TLS)")
    g.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    g.add_argument("--timeout", type=_duration, default=0.0, metavar="D",
                   help="90s, 10m or seconds: each call's deadline, and how long submit/watch "
                        "wait for the job (it goes on on the server; past it: exit 3)")


def _engine(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine options (as sqctl quantize)")
    g.add_argument("--bits", type=_int_in(2, 8))
    g.add_argument("--granularity", choices=list(GRANULARITIES))
    g.add_argument("--block-size", type=_int_in(2, 1 << 16))
    g.add_argument("--symmetric", action="store_true", default=None)
    g.add_argument("--split", choices=["on", "off", "auto", "true", "false"])
    g.add_argument("--form", choices=list(FORMS))
    g.add_argument("--format", choices=list(FORMATS))
    g.add_argument("--target", choices=list(TARGETS))
    g.add_argument("--ort-accuracy-level", type=int)
    g.add_argument("--nbits-min-elements", type=int)
    g.add_argument("--cluster-scope", choices=list(CLUSTER_SCOPES))
    g.add_argument("--kmeans", choices=["exact", "reference"])
    g.add_argument("--boundaries", choices=["auto", "quant", "kmeans"])
    g.add_argument("--rounding", choices=list(ROUNDINGS))
    g.add_argument("--scale-type", choices=list(SCALE_TYPES))
    g.add_argument("--exclude", action="append", default=[], metavar="REGEX")
    g.add_argument("--exclude-op", action="append", default=[], metavar="OP")
    g.add_argument("--layer", action="append", default=[], metavar="'REGEX=key:value,...'")
    g.add_argument("--initializer-inputs", choices=["weights", "inputs"])
    g.add_argument("--quantize-gather", choices=["on", "off"])
    g.add_argument("--bpw-budget", type=float, default=0.0)
    g.add_argument("--min-elements", type=_int_in(0, 1 << 40))
    g.add_argument("--target-opset", type=_int_in(0, 1000))
    g.add_argument("--threads", type=_int_in(0, 1024))
    g.add_argument("--external-data", action="store_true", default=None)
    g.add_argument("--verify", choices=["on", "off"])
    g.add_argument("--verify-input", metavar="FILE", help="uploaded with the model")
    g.add_argument("--activations", choices=list(ACTIVATIONS),
                   help="full-integer QDQ output; implies --target qdq when no target/format is given")
    g.add_argument("--calibration", action="append", default=[], metavar="PATH",
                   help="a calibration sample (.npy/.npz/.pb) or a directory of them, uploaded "
                   "with the model (repeatable; no subdirectories)")
    g.add_argument("--calibration-method", choices=list(CALIBRATION_METHODS))
    g.add_argument("--calibration-percentile", type=float, metavar="P", help="in (50, 100]")
    g.add_argument("--input-range", action="append", default=[], metavar="NAME=LO:HI",
                   help="a graph input's range for data-free ranges (repeatable)")
    g.add_argument("--split-activations", choices=list(ACTIVATION_SPLITS))
    g.add_argument("--idempotency-key", metavar="K")
    g.add_argument("-o", "--output", metavar="OUT.onnx")
    g.add_argument("--detach", action="store_true", help="print the job id and return")


def build_options(a: argparse.Namespace) -> QuantizeOptions:
    """QuantizeOptions from submit's flags; InvalidArgument for a conflict sqctl refuses."""
    fmt, target = a.format, a.target
    if a.activations not in (None, "off") and fmt is None and target is None:
        target = fmt = "qdq"  # a full-integer model is a QDQ model: --activations means --target qdq
    if fmt == "qdq" and target is None:
        target = "qdq"  # --format qdq is --target qdq
    if a.target is not None and a.format is not None and (a.format != "qdq" or a.target != "qdq"):
        raise InvalidArgument(
            f"--target {a.target} and --format {a.format} conflict: --format qdq is --target qdq, "
            "and --format fake/split write FP32 weights for no runtime target; give one of them")
    if a.target is not None:
        fmt = "qdq"
    if a.verify_input and a.verify == "off":
        raise InvalidArgument("--verify-input is given but --verify is off")
    if a.calibration and a.activations in (None, "off") and a.split_activations not in ("range", "on"):
        raise InvalidArgument("--calibration is given but nothing reads it (--activations is off "
                              "and --split-activations is not range)")
    split = {"true": "on", "false": "off"}.get(a.split, a.split)
    on_off = lambda v: None if v is None else v == "on"  # noqa: E731
    return QuantizeOptions(
        bits=a.bits, granularity=a.granularity, block_size=a.block_size, symmetric=a.symmetric,
        split=split, form=a.form, format=fmt, target=target, cluster_scope=a.cluster_scope,
        exclude=tuple(a.exclude), exclude_ops=tuple(a.exclude_op), layer_overrides=tuple(a.layer),
        min_weight_elements=a.min_elements, target_opset=a.target_opset, threads=a.threads,
        external_data=a.external_data,
        reference_kmeans=None if a.kmeans is None else a.kmeans == "reference",
        quant_aware_boundaries=None if a.boundaries in (None, "auto") else a.boundaries == "quant",
        rounding=a.rounding,
        initializer_inputs_are_weights=None if a.initializer_inputs is None
        else a.initializer_inputs == "weights",
        ort_accuracy_level=a.ort_accuracy_level, nbits_min_elements=a.nbits_min_elements,
        quantize_gather=on_off(a.quantize_gather), bpw_budget=a.bpw_budget,
        verify=on_off(a.verify), activations=a.activations,
        calibration_method=a.calibration_method, calibration_percentile=a.calibration_percentile,
        input_ranges=tuple(a.input_range), split_activations=a.split_activations,
        scale_type=a.scale_type)


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=f"python3 -m {PROG}", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def command(name: str, help_text: str, aliases: Sequence[str] = ()) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text, aliases=list(aliases))
        _common(p)
        return p

    p = command("submit", "upload a model (with its external data), quantize it on the "
                "server, follow the job and download the output to -o")
    p.add_argument("model", metavar="MODEL.onnx")
    _engine(p)
    command("status", "a job's state, progress, error and sizes", ["get"]).add_argument("job", metavar="JOB", help=JOB_HELP)
    command("watch", "follow a job until it ends; exit 1 if it failed or was cancelled").add_argument("job", metavar="JOB", help=JOB_HELP)
    p = command("list", "jobs this token may see, newest first")
    p.add_argument("--state", action="append", default=[],
                   choices=["queued", "running", "succeeded", "failed", "cancelled"])
    p.add_argument("--limit", type=_int_in(1, 1 << 31))
    command("cancel", "stop a queued or running job").add_argument("job", metavar="JOB", help=JOB_HELP)
    command("delete", "remove a finished job and its artifacts").add_argument("job", metavar="JOB", help=JOB_HELP)
    command("models", "stored models: id, size, last use, file").add_argument(
        "--limit", type=_int_in(1, 1 << 31))
    command("delete-model", "remove an uploaded model (finished jobs keep their output)").add_argument(
        "model_id", metavar="MODEL_ID", help="the model's id, or its resource name models/ID")
    p = command("download", "fetch a succeeded job's output (resumes from FILE.partial, "
                "checks SHA-256)")
    p.add_argument("job", metavar="JOB", help=JOB_HELP)
    p.add_argument("-o", "--output", required=True, metavar="FILE")
    command("report", "the per-layer report (--json: the full JSON)").add_argument("job", metavar="JOB", help=JOB_HELP)
    command("inspect", "upload a model and describe it").add_argument("model", metavar="MODEL.onnx")
    command("health", "SERVING (exit 0) or NOT_SERVING (exit 3)")
    return parser


# ---- commands --------------------------------------------------------------------------

def run_submit(c: Client, a: argparse.Namespace) -> int:
    options = build_options(a)
    quiet = a.quiet or a.json
    job = c.submit(a.model, bits=None, options=options, verify_input=a.verify_input,
                   calibration=a.calibration,
                   idempotency_key=a.idempotency_key, progress=bar("upload", quiet))
    if a.detach:
        print(to_json(job.proto) if a.json else job.id)
        return EXIT_OK
    if not quiet:
        print(f"job {job.id}", file=sys.stderr)
    follow(job, quiet, a.timeout)
    rc = job_outcome(job)
    if rc != EXIT_OK:
        return rc
    if a.output:
        job.download(a.output, bar("download", quiet))
    if a.json:
        print(to_json(job.proto))
    elif not a.quiet:
        print_job(job)
        if a.output:
            print(f"saved     {a.output}")
        else:
            print(f"download with: python3 -m {PROG} download {job.id} -o OUT.onnx")
    return EXIT_OK


def run_list(c: Client, a: argparse.Namespace) -> int:
    jobs = c.list_jobs([JobState.parse(s) for s in a.state], limit=a.limit or 0)
    if a.json:
        from ._stubs import sq_pb2
        print(to_json(sq_pb2.ListJobsResponse(jobs=[j.proto for j in jobs])))
        return EXIT_OK
    print(f"{'JOB':<32}  {'STATE':<24}  {'CREATED':<20}  MODEL")
    for j in jobs:
        created = j.create_time.strftime("%Y-%m-%dT%H:%M:%S") if j.create_time else ""
        print(f"{j.id:<32}  {progress_line(j):<24}  {created:<20}  {j.model_id[:12]}")
    return EXIT_OK


def run_models(c: Client, a: argparse.Namespace) -> int:
    models = c.list_models(limit=a.limit or 0)
    if a.json:
        print(json.dumps({"models": [
            {"model_id": m.model_id, "name": m.name, "size_bytes": m.size_bytes,
             "last_use_time": m.last_use_time.isoformat() if m.last_use_time else None,
             "files": [{"name": f.name, "size": f.size, "sha256": f.sha256} for f in m.files]}
            for m in models]}, indent=2))
        return EXIT_OK
    print(f"{'MODEL':<64}  {'MB':>10}  {'LAST USED':<20}  FILE")
    for m in models:
        used = m.last_use_time.strftime("%Y-%m-%dT%H:%M:%S") if m.last_use_time else ""
        print(f"{m.model_id:<64}  {m.size_bytes / 1e6:>10.1f}  {used:<20}  {m.files[0].name if m.files else ''}")
    return EXIT_OK


def run_inspect(c: Client, a: argparse.Namespace) -> int:
    up = c.upload(a.model, progress=bar("upload", a.json or a.quiet))
    info = c.inspect(up.model_id)
    if a.json:
        print(to_json(info))
        return EXIT_OK
    ext = ", external data" if info.uses_external_data else ""
    print(f"model     {up.model_id}\nir        {info.ir_version}\nopset     {info.opset}\n"
          f"size      {human(info.model_bytes)} (weights {human(info.weight_bytes)}){ext}")
    print("ops       " + " ".join(sorted(f"{k}={v}" for k, v in info.op_histogram.items())))
    if info.unsupported_ops:
        print("unsupported (qdq) " + " ".join(info.unsupported_ops))
    for bits in sorted(info.estimated_output_bytes):
        print(f"estimate  {bits}-bit -> {human(info.estimated_output_bytes[bits])}")
    print(f"layers    {len(info.layers)} quantizable")
    for layer in info.layers:
        print(f"  {layer.name:<40} {layer.op_type:<14} [{'x'.join(str(d) for d in layer.shape)}]")
    return EXIT_OK


def run(a: argparse.Namespace) -> int:
    client = Client(a.server, a.token or None, tls=a.tls or bool(a.tls_ca), tls_ca=a.tls_ca,
                    tls_cert=a.tls_cert, tls_key=a.tls_key, **({"timeout": a.timeout} if a.timeout else {}))
    with client as c:
        cmd = a.command
        if cmd == "submit":
            return run_submit(c, a)
        if cmd == "list":
            return run_list(c, a)
        if cmd == "models":
            return run_models(c, a)
        if cmd == "inspect":
            return run_inspect(c, a)
        if cmd == "health":
            serving = c.health()
            status = "SERVING" if serving else "NOT_SERVING"
            print(f'{{"status": "{status}"}}' if a.json else status)
            return EXIT_OK if serving else EXIT_UNAVAILABLE
        if cmd in ("status", "get"):
            job = c.get(a.job)
            if a.json:
                print(to_json(job.proto))
            else:
                print_job(job)
            return EXIT_OK
        if cmd == "watch":
            job = follow(c.get(a.job), a.json or a.quiet, a.timeout)
            if a.json:
                print(to_json(job.proto))
            return job_outcome(job)
        if cmd == "cancel":
            job = c.cancel(a.job)
            print(to_json(job.proto) if a.json else f"{a.job} {progress_line(job)}")
            return EXIT_OK
        if cmd == "delete-model":
            c.delete_model(a.model_id)
            print(json.dumps({"deleted_model": a.model_id}) if a.json else f"deleted model {a.model_id}")
            return EXIT_OK
        if cmd == "delete":
            c.delete(a.job)
            if not a.json:
                print(f"deleted {a.job}")
            return EXIT_OK
        if cmd == "download":
            job = c.get(a.job)
            if job.state != JobState.SUCCEEDED:
                raise FailedPrecondition(f"job {a.job} is {job.state.name}; nothing to download yet")
            job.download(a.output, bar("download", a.json or a.quiet))
            if not a.json:
                print(f"saved {a.output}")
            return EXIT_OK
        if cmd == "report":
            report = c.report(a.job)
            if a.json:
                print(json.dumps(report.data, indent=2))
            else:
                sys.stdout.write(report.summary)
            return EXIT_OK
    raise AssertionError(f"unhandled command {a.command}")


def main(argv: Optional[List[str]] = None) -> int:
    """Runs one command; returns its exit code."""
    args = make_parser().parse_args(argv)
    try:
        return run(args)
    except SqError as e:  # local problems (InvalidArgument, NotFound) and the server's alike
        return fail(e)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
