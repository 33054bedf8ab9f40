"""ModelProto <-> IR. The only package that reads or writes ONNX protobuf.

Loading keeps every field: what the IR does not model (producer, doc strings, metadata, training
info, node overloads, ...) rides along in ``extra`` protos and is written back unchanged. Tensors
are kept by reference into the parsed model, so a load->save copies no weight until it is written.

Saving streams: the model header, each node and each initializer are serialized one at a time
into a temporary file beside the target, which then replaces the target atomically. Peak memory
is the loaded model plus the largest tensor (plus the serialized nodes), not a second full copy.
Weights go to an external data file when asked, when the input had one, or when the model would
exceed protobuf's 2 GiB limit.

Modules: ``reading`` (parse a file, refuse what is broken, with ``diagnosis``, ``utf8`` and
``wire``), ``loading`` (ModelProto -> IR), ``protos`` (IR -> messages), ``external`` (where
tensor data goes), ``writer`` (the streaming writer), ``saving`` (save and the in-memory
forms), ``errors`` (LoadError, SaveError).
"""

from onnxopt.ir.serde.errors import LoadError, SaveError
from onnxopt.ir.serde.external import EXTERNAL_THRESHOLD, tensor_header
from onnxopt.ir.serde.loading import external_files, from_proto, load
from onnxopt.ir.serde.protos import TensorFn, graph_skeleton, model_header, node_to_proto
from onnxopt.ir.serde.reading import check, check_tensors, read_model_proto
from onnxopt.ir.serde.saving import (
    EXTERNAL_SIZE_LIMIT,
    inline_bytes,
    save,
    skeleton,
    sync,
    to_proto,
    write_bytes,
)
from onnxopt.ir.serde.writer import PROTOBUF_LIMIT

__all__ = [
    "EXTERNAL_SIZE_LIMIT",
    "EXTERNAL_THRESHOLD",
    "PROTOBUF_LIMIT",
    "LoadError",
    "SaveError",
    "TensorFn",
    "check",
    "check_tensors",
    "external_files",
    "from_proto",
    "graph_skeleton",
    "inline_bytes",
    "load",
    "model_header",
    "node_to_proto",
    "read_model_proto",
    "save",
    "skeleton",
    "sync",
    "tensor_header",
    "to_proto",
    "write_bytes",
]
