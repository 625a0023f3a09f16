"""Which files make up an ONNX model: the .onnx itself plus the external data it references.

Mirrors SqClient::ModelFiles (C++): every tensor with data_location EXTERNAL in the main
graph, its nodes' attributes (subgraphs included) and the model's functions contributes its
`location`. A location that is absolute, climbs with "..", leads out of the model's folder
through a symlink, or is a name the server refuses is rejected before anything is read.
"""
from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Set

from . import _wire
from .errors import InvalidArgument, NotFound

# onnx.proto field numbers used here.
_MODEL_GRAPH, _MODEL_FUNCTIONS = 7, 25
_FUNCTION_NODE = 7
_GRAPH_NODE, _GRAPH_INITIALIZER = 1, 5
_NODE_ATTRIBUTE = 5
_ATTR_T, _ATTR_G, _ATTR_TENSORS, _ATTR_GRAPHS = 5, 6, 10, 11
_TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 13, 14
_ENTRY_KEY, _ENTRY_VALUE = 1, 2
_EXTERNAL = 1


@dataclass(frozen=True)
class LocalFile:
    """One file of an upload: where it is here and the name it is sent under."""

    path: Path  # on this machine
    name: str   # relative to the model's folder, as the model references it


def _tensor(buf: memoryview, out: Set[str]) -> None:
    location = None
    external = False
    for number, wire, value in _wire.fields(buf):
        if number == _TENSOR_DATA_LOCATION and wire == _wire.VARINT:
            external = value == _EXTERNAL
        elif number == _TENSOR_EXTERNAL_DATA and wire == _wire.LEN:
            key = val = None
            for n, w, v in _wire.fields(value):
                if w != _wire.LEN:
                    continue
                if n == _ENTRY_KEY:
                    key = bytes(v).decode("utf-8", "replace")
                elif n == _ENTRY_VALUE:
                    val = bytes(v).decode("utf-8", "replace")
            if key == "location" and val is not None:
                location = val
    if external and location is not None:
        out.add(location)


def _attribute(buf: memoryview, out: Set[str]) -> None:
    for number, wire, value in _wire.fields(buf):
        if wire != _wire.LEN:
            continue
        if number in (_ATTR_T, _ATTR_TENSORS):
            _tensor(value, out)
        elif number in (_ATTR_G, _ATTR_GRAPHS):
            _graph(value, out)


def _node(buf: memoryview, out: Set[str]) -> None:
    for number, wire, value in _wire.fields(buf):
        if number == _NODE_ATTRIBUTE and wire == _wire.LEN:
            _attribute(value, out)


def _graph(buf: memoryview, out: Set[str]) -> None:
    for number, wire, value in _wire.fields(buf):
        if wire != _wire.LEN:
            continue
        if number == _GRAPH_INITIALIZER:
            _tensor(value, out)
        elif number == _GRAPH_NODE:
            _node(value, out)


def external_locations(model_bytes: memoryview) -> Set[str]:
    """The `location` of every external tensor the serialized ModelProto references.

    Raises _wire.WireError if the bytes are not a protobuf message.
    """
    out: Set[str] = set()
    for number, wire, value in _wire.fields(model_bytes):
        if wire != _wire.LEN:
            continue
        if number == _MODEL_GRAPH:
            _graph(value, out)
        elif number == _MODEL_FUNCTIONS:
            for n, w, v in _wire.fields(value):
                if n == _FUNCTION_NODE and w == _wire.LEN:
                    _node(v, out)
    return out


def validate_relative_name(name: str) -> None:
    """The server's rule for a file name (ValidateRelativeName): InvalidArgument if refused."""
    if not name:
        raise InvalidArgument("empty file name")
    if len(name.encode()) > 1024:
        raise InvalidArgument("file name too long")
    if name.startswith("/"):
        raise InvalidArgument(f"absolute file name not allowed: {name}")
    if any(c == "\\" or ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise InvalidArgument(f"bad character in file name: {name!r}")
    if any(part in ("", ".", "..") for part in name.split("/")):
        raise InvalidArgument(f"file name must be a plain relative path: {name}")


def _resolve_inside(base: Path, location: str, model: Path) -> Path:
    def bad(why: str) -> InvalidArgument:
        return InvalidArgument(f"{model} references external data '{location}' {why}")

    if location.startswith("/") or "\\" in location:
        raise bad("which is absolute; only paths inside the model's directory are allowed")
    if ".." in location.split("/"):
        raise bad("which escapes the model's directory ('..')")
    joined = base / location
    if not joined.exists():
        raise NotFound(f"{model} references external data '{location}', which does not exist")
    resolved = joined.resolve()
    if base not in resolved.parents:
        raise bad("which leads outside the model's directory (symlink?)")
    if not resolved.is_file():
        raise bad("which is not a regular file")
    try:
        validate_relative_name(location)
    except InvalidArgument as e:
        raise bad(f"with a name the server refuses ({e.message})") from None
    return resolved


def model_files(onnx_path: "os.PathLike[str] | str") -> List[LocalFile]:
    """The model file (sent under its base name) followed by its external data files.

    Raises NotFound if the model or a referenced file is missing, InvalidArgument if the
    file is not a protobuf message or a reference leads outside the model's folder.
    """
    path = Path(onnx_path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise InvalidArgument(f"{path} is not an ONNX model (empty file)")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                view = memoryview(mapped)
                try:
                    locations = external_locations(view)
                except _wire.WireError as e:
                    raise InvalidArgument(f"{path} is not an ONNX model ({e})") from None
                finally:
                    view.release()
    except FileNotFoundError:
        raise NotFound(f"cannot open {path}") from None
    except IsADirectoryError:
        raise InvalidArgument(f"{path} is a directory, not an ONNX model") from None
    files = [LocalFile(path, path.name)]
    if locations:
        base = path.parent.resolve()
        for location in sorted(locations):
            files.append(LocalFile(_resolve_inside(base, location, path), location))
    return files


_TENSOR_SUFFIXES = (".npy", ".npz", ".pb")


def calibration_files(paths: "Iterable[os.PathLike[str] | str]") -> List[LocalFile]:
    """Calibration samples to upload, as sqctl submit --calibration finds them: a file is one
    sample; a directory gives its .npy/.npz/.pb files in name order (what the engine reads
    of a directory). Each goes under its file name. A subdirectory (the ONNX test-data
    layout, one sample of .pb files) cannot be named as one uploaded file: InvalidArgument.
    NotFound for a path that does not exist."""
    out: List[LocalFile] = []
    for given in paths:
        p = Path(given)
        if not p.is_dir():
            if not p.is_file():
                raise NotFound(f"calibration input {p} does not exist")
            out.append(LocalFile(p, p.name))
            continue
        inside: List[Path] = []
        for e in p.iterdir():
            if e.is_dir():
                raise InvalidArgument(
                    f"calibration directory {p}: {e.name} is a directory; samples are uploaded one "
                    "per file (.npy, .npz, .pb), so samples of .pb files in subdirectories need "
                    "sqctl quantize")
            if e.is_file() and e.suffix.lower() in _TENSOR_SUFFIXES:
                inside.append(e)
        if not inside:
            raise InvalidArgument(f"calibration directory {p} holds no .npy, .npz or .pb file")
        out.extend(LocalFile(e, e.name) for e in sorted(inside))
    return out
