"""Test support: tiny ONNX models written by hand and a real sq-server in a subprocess.

Models are encoded with sq_client._wire (no `onnx` package needed): a chain of MatMul
layers on FP32 weights, optionally stored as external data beside the model.
"""
from __future__ import annotations

import os
import random
import signal
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Sequence

from sq_client._wire import encode_int, encode_len

REPO_ROOT = Path(__file__).resolve().parents[3]
PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # client/python


def _str(number: int, s: str) -> bytes:
    return encode_len(number, s.encode())


def _value_info(name: str, dims: Sequence[int]) -> bytes:
    shape = b"".join(encode_len(1, encode_int(1, d)) for d in dims)   # Dimension.dim_value
    tensor_type = encode_int(1, 1) + encode_len(2, shape)            # elem_type FLOAT, shape
    return _str(1, name) + encode_len(2, encode_len(1, tensor_type))  # name, TypeProto.tensor_type


def matmul_chain(path: Path, layers: int = 1, width: int = 64, batch: int = 2, seed: int = 1,
                 external: Optional[str] = None) -> Path:
    """Writes a model X[batch, width] -> MatMul(W_i[width, width]) x layers -> Y.

    Weights are seeded Gaussian, one matrix shared by every layer (big models stay quick to
    write). With `external`, every weight lives in that file beside the
    model (data_location EXTERNAL, offsets aligned to 64) instead of raw_data.
    """
    rng = random.Random(seed)
    nodes, inits = [], []
    blob = bytearray()
    prev = "X"
    w = struct.pack(f"<{width * width}f", *(rng.gauss(0.0, 0.1) for _ in range(width * width)))
    for i in range(layers):
        tensor = encode_int(1, width) + encode_int(1, width) + encode_int(2, 1) + _str(8, f"W{i}")
        if external:
            offset = (len(blob) + 63) // 64 * 64
            blob.extend(b"\0" * (offset - len(blob)))
            blob.extend(w)
            for key, value in (("location", external), ("offset", str(offset)), ("length", str(len(w)))):
                tensor += encode_len(13, _str(1, key) + _str(2, value))
            tensor += encode_int(14, 1)
        else:
            tensor += encode_len(9, w)
        inits.append(encode_len(5, tensor))
        out = "Y" if i == layers - 1 else f"H{i}"
        nodes.append(encode_len(1, _str(1, prev) + _str(1, f"W{i}") + _str(2, out) +
                                _str(3, f"matmul_{i}") + _str(4, "MatMul")))
        prev = out
    graph = (b"".join(nodes) + _str(2, "tiny") + b"".join(inits) +
             encode_len(11, _value_info("X", [batch, width])) +
             encode_len(12, _value_info("Y", [batch, width])))
    model = (encode_int(1, 8) + _str(2, "sq_client-tests") + encode_len(7, graph) +
             encode_len(8, _str(1, "") + encode_int(2, 17)))
    path.write_bytes(model)
    if external:
        (path.parent / external).write_bytes(bytes(blob))
    return path


def write_npy(path: Path, rows: Sequence[Sequence[float]]) -> Path:
    """Writes a 2-D float32 .npy (format 1.0) without numpy."""
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d), }" % (len(rows), len(rows[0]))
    header += " " * (64 - (10 + len(header) + 1) % 64) + "\n"
    values = [v for row in rows for v in row]
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode("latin1") +
                     struct.pack(f"<{len(values)}f", *values))
    return path


def free_port() -> int:
    """A TCP port nobody listens on right now (the kernel's choice)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_binary() -> Path:
    """$SQ_SERVER_BIN (set by CTest), else the default build's sq-server."""
    env = os.environ.get("SQ_SERVER_BIN")
    path = Path(env) if env else REPO_ROOT / "build" / "server" / "sq-server"
    if not path.is_file():
        raise RuntimeError(f"sq-server not found at {path}: build it (ninja -C build sq-server) "
                           "or set $SQ_SERVER_BIN")
    return path


def clean_env() -> dict:
    """The environment without SQ_TOKEN/SQ_SERVER, which would change servers and CLIs."""
    env = dict(os.environ)
    env.pop("SQ_TOKEN", None)
    env.pop("SQ_SERVER", None)
    return env


class SqServer:
    """One sq-server on 127.0.0.1 with its own artifact directory; stop() ends it."""

    def __init__(self, workdir: Path, port: int = 0, token_file: Optional[Path] = None,
                 workers: int = 1) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="server-", dir=workdir))
        self.log_path = self.dir / "server.log"
        self.requested_port = port
        self.port = port
        self.token_file = token_file
        self.workers = workers
        self.proc: Optional[subprocess.Popen] = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def launch(self) -> None:
        """Starts the process without waiting for it to listen."""
        args: List[str] = [str(server_binary()), f"--listen=127.0.0.1:{self.requested_port}",
                           "--metrics_listen=", f"--artifact_dir={self.dir / 'artifacts'}",
                           f"--workers={self.workers}", "--job_threads=1", "--log_rpcs=false",
                           "--drain_grace_seconds=1"]
        if self.token_file is not None:
            args.append(f"--auth_token_file={self.token_file}")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=clean_env())

    def start(self, timeout: float = 30.0) -> "SqServer":
        """Starts the server and waits for its "serving ... (port N)" line."""
        self.launch()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_text()
            if "(port " in text:
                self.port = int(text.split("(port ", 1)[1].split(")", 1)[0])
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"sq-server exited with {self.proc.returncode}:\n{text}")
            time.sleep(0.05)
        raise RuntimeError(f"sq-server did not start within {timeout}s:\n{self.log_text()}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
