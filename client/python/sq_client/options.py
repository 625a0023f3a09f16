"""QuantizeOptions: the engine options of a job, with the names sqctl uses.

Every field left None (or empty) takes the server's default (docs/api.md, "Jobs"). Names
of enumerated choices are sqctl's ("channel", "ort-cpu", "auto", ...); an unknown name is
InvalidArgument before anything is sent. Ranges and combinations are checked by the
server, which answers INVALID_ARGUMENT naming the field.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple

from ._stubs import sq_pb2
from .errors import InvalidArgument

GRANULARITIES: Dict[str, int] = {
    "tensor": sq_pb2.GRANULARITY_TENSOR, "channel": sq_pb2.GRANULARITY_CHANNEL,
    "block": sq_pb2.GRANULARITY_BLOCK}
SPLIT_MODES: Dict[str, int] = {
    "on": sq_pb2.SPLIT_MODE_ON, "off": sq_pb2.SPLIT_MODE_OFF, "auto": sq_pb2.SPLIT_MODE_AUTO}
FORMS: Dict[str, int] = {
    "auto": sq_pb2.SPLIT_FORM_UNSPECIFIED, "branches": sq_pb2.SPLIT_FORM_BRANCHES,
    "folded": sq_pb2.SPLIT_FORM_FOLDED, "compact": sq_pb2.SPLIT_FORM_COMPACT,
    "outer8": sq_pb2.SPLIT_FORM_OUTER8}
FORMATS: Dict[str, int] = {
    "qdq": sq_pb2.OUTPUT_FORMAT_QDQ, "fake": sq_pb2.OUTPUT_FORMAT_FAKE,
    "split": sq_pb2.OUTPUT_FORMAT_SPLIT}
TARGETS: Dict[str, int] = {
    "ort-cpu": sq_pb2.TARGET_ORT_CPU, "qdq": sq_pb2.TARGET_QDQ,
    "portable": sq_pb2.TARGET_PORTABLE}
CLUSTER_SCOPES: Dict[str, int] = {
    "auto": sq_pb2.CLUSTER_SCOPE_AUTO, "tensor": sq_pb2.CLUSTER_SCOPE_TENSOR,
    "channel": sq_pb2.CLUSTER_SCOPE_CHANNEL}
ACTIVATIONS: Dict[str, int] = {
    "off": sq_pb2.ACTIVATION_TYPE_UNSPECIFIED, "int8": sq_pb2.ACTIVATION_TYPE_INT8,
    "uint8": sq_pb2.ACTIVATION_TYPE_UINT8}
CALIBRATION_METHODS: Dict[str, int] = {
    "minmax": sq_pb2.CALIBRATION_METHOD_MINMAX, "percentile": sq_pb2.CALIBRATION_METHOD_PERCENTILE}
SCALE_TYPES: Dict[str, int] = {
    "auto": sq_pb2.SCALE_TYPE_AUTO, "float16": sq_pb2.SCALE_TYPE_FLOAT16,
    "float32": sq_pb2.SCALE_TYPE_FLOAT32}
ROUNDINGS: Dict[str, int] = {
    "balanced": sq_pb2.ROUNDING_BALANCED, "nearest": sq_pb2.ROUNDING_NEAREST}
ACTIVATION_SPLITS: Dict[str, int] = {
    "off": sq_pb2.ACTIVATION_SPLIT_UNSPECIFIED, "range": sq_pb2.ACTIVATION_SPLIT_RANGE,
    "on": sq_pb2.ACTIVATION_SPLIT_RANGE,  # as sqctl: the grouping that measured better
    "positional": sq_pb2.ACTIVATION_SPLIT_POSITIONAL}


def _choice(flag: str, value: Optional[str], table: Dict[str, int]) -> Optional[int]:
    if value is None:
        return None
    try:
        return table[value]
    except KeyError:
        raise InvalidArgument(
            f"{flag} wants {', '.join(table)}, got '{value}'") from None


@dataclass(frozen=True)
class QuantizeOptions:
    """sq.v1.QuantizeOptions in Python terms (see proto/sq/v1/sq.proto for each field)."""

    bits: Optional[int] = None                 # 2..8; server default 4
    granularity: Optional[str] = None          # tensor | channel | block
    block_size: Optional[int] = None
    symmetric: Optional[bool] = None
    split: Optional[str] = None                # on | off | auto
    form: Optional[str] = None                 # auto | branches | folded | compact | outer8
    format: Optional[str] = None               # qdq | fake | split
    target: Optional[str] = None               # ort-cpu | qdq | portable
    cluster_scope: Optional[str] = None        # auto | tensor | channel
    exclude: Sequence[str] = field(default_factory=tuple)        # RE2 name patterns
    exclude_ops: Sequence[str] = field(default_factory=tuple)
    layer_overrides: Sequence[str] = field(default_factory=tuple)  # "REGEX=key:value,..."
    min_weight_elements: Optional[int] = None
    target_opset: Optional[int] = None
    threads: Optional[int] = None
    external_data: Optional[bool] = None
    reference_kmeans: Optional[bool] = None
    quant_aware_boundaries: Optional[bool] = None
    initializer_inputs_are_weights: Optional[bool] = None
    ort_accuracy_level: Optional[int] = None
    nbits_min_elements: Optional[int] = None
    quantize_gather: Optional[bool] = None
    bpw_budget: float = 0.0
    verify: Optional[bool] = None
    verify_input: str = ""                     # a file name of the upload, never a path
    activations: Optional[str] = None          # off | int8 | uint8 (needs target qdq)
    calibration_inputs: Sequence[str] = field(default_factory=tuple)  # file names of the upload
    calibration_method: Optional[str] = None   # percentile | minmax
    calibration_percentile: Optional[float] = None  # in (50, 100]; server default 99.99
    input_ranges: Sequence[str] = field(default_factory=tuple)  # "NAME=LO:HI"
    split_activations: Optional[str] = None    # off | on (= range) | range | positional
    scale_type: Optional[str] = None           # auto (server default) | float16 | float32
    rounding: Optional[str] = None             # balanced (server default) | nearest

    def to_proto(self) -> "sq_pb2.QuantizeOptions":
        """The wire message. InvalidArgument for an unknown choice name."""
        o = sq_pb2.QuantizeOptions()
        for name in ("bits", "block_size", "symmetric", "min_weight_elements", "target_opset",
                     "threads", "external_data", "reference_kmeans", "quant_aware_boundaries",
                     "initializer_inputs_are_weights", "ort_accuracy_level",
                     "nbits_min_elements", "quantize_gather", "verify",
                     "calibration_percentile"):
            value = getattr(self, name)
            if value is not None:
                setattr(o, name, value)
        wire_name = {"split": "split_mode"}
        for name, table in (("granularity", GRANULARITIES), ("split", SPLIT_MODES),
                            ("form", FORMS), ("format", FORMATS), ("target", TARGETS),
                            ("cluster_scope", CLUSTER_SCOPES), ("activations", ACTIVATIONS),
                            ("calibration_method", CALIBRATION_METHODS),
                            ("split_activations", ACTIVATION_SPLITS),
                            ("scale_type", SCALE_TYPES), ("rounding", ROUNDINGS)):
            value = _choice(name, getattr(self, name), table)
            if value is not None:
                setattr(o, wire_name.get(name, name), value)
        for name, wire in (("exclude", "exclude_name_patterns"), ("exclude_ops", "exclude_op_types"),
                           ("layer_overrides", "layer_overrides"),
                           ("calibration_inputs", "calibration_inputs"),
                           ("input_ranges", "input_ranges")):
            values: Tuple[str, ...] = (getattr(self, name),) if isinstance(getattr(self, name), str) \
                else tuple(getattr(self, name))
            getattr(o, wire).extend(values)
        o.bpw_budget = self.bpw_budget
        o.verify_input = self.verify_input
        return o
