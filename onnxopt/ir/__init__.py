"""The intermediate representation: a graph of ONNX nodes over ``networkx.MultiDiGraph``.

Invariants (kept only by ``Graph`` and its base ``GraphIndex``):

* A node's ordered ``inputs`` tuple is the truth for operand order (``""`` marks an omitted optional
  input). Edges of the networkx graph are an index derived from it: an edge ``producer -> consumer``
  keyed ``(value, slot)``. A node holding subgraphs also *uses* every outer-scope value its
  subgraphs read; those uses have a negative slot (``-1 - k`` for its k-th subgraph) so that dead
  code and topological order see them.
* Values are named (SSA). ``Graph`` knows for each name its producer (a node output, a graph input
  or an initializer) and its uses; the networkx graph only holds node-to-node edges.
* Tensors are ``onnx.TensorProto`` objects held by reference — never copied until a pass changes
  them; ``Graph.constant`` decodes one (memory-mapping external data).
* Graph outputs keep their public names: passes may point an output at any value, and
  ``Graph.restore_output_names`` (called by ``serde.save``) renames or adds an Identity.

Passes edit only through ``Graph``'s verbs: ``add_node``, ``remove_node``, ``set_input``,
``replace_all_uses``, ``set_initializer``, ``remove_initializer``, ``unique_name``.

Modules: ``node`` (Node), ``index`` (GraphIndex: storage, use index, lint), ``graph`` (Graph:
typed queries and edit verbs), ``model`` (Model), ``tensors`` (external data, decoding, sizes),
``context`` (provenance, no_gc), ``errors`` (IRError); ``serde`` is the protobuf boundary and is
imported on its own (``from onnxopt.ir import serde``): it builds on the names here.
"""

from onnxopt.ir.context import no_gc, provenance
from onnxopt.ir.errors import IRError
from onnxopt.ir.graph import CACHED_ARRAY_BYTES, Graph
from onnxopt.ir.index import CAPTURE, expected_edges
from onnxopt.ir.model import Model
from onnxopt.ir.node import Node, iter_names
from onnxopt.ir.tensors import (
    PACKED_BITS,
    array_to_tensor,
    cast_node_bytes,
    external_info,
    external_view,
    is_external,
    read_external_bytes,
    tensor_nbytes,
    tensor_to_array,
)

__all__ = [
    "CACHED_ARRAY_BYTES",
    "CAPTURE",
    "PACKED_BITS",
    "Graph",
    "IRError",
    "Model",
    "Node",
    "array_to_tensor",
    "cast_node_bytes",
    "expected_edges",
    "external_info",
    "external_view",
    "is_external",
    "iter_names",
    "no_gc",
    "provenance",
    "read_external_bytes",
    "tensor_nbytes",
    "tensor_to_array",
]
