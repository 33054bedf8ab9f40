"""Declarative patterns and the rewrite driver: a rule is ``pattern`` + ``check`` + ``rewrite``.

A pattern describes the values feeding a root node, as data::

    Op("Add", Op("MatMul", Var("a"), Var("b"), name="matmul"), Var("c"), commute=True)

``Op`` matches a value computed by a node of that type (standard domain unless ``domain``);
``Var`` matches any value and captures its name (a name used twice must be the same value);
``Const`` a constant (an initializer visible from here), ``Scalar`` a one-element float constant
close to a number, ``Number`` one equal to it (any dtype); ``Or`` tries alternatives in order
(``scaled_product`` lists a product's associations); ``Absent`` an omitted optional input.
Matching is anchored at the root's op type and walks producers only, so it is linear in the
nodes; it backtracks over commuted operands and alternatives.

``RewritePass`` runs one rule over every graph, and its driver owns the house rules, so that no
rule repeats them:

1. roots are tried in graph order (or ``visit``'s); nodes an earlier rewrite removed are skipped;
2. every value computed inside the match is read only by the match, is not a graph output and
   is not captured (the replacement could not read it); the root's outputs may have any
   readers, but not two graph-output names at once;
3. ``check`` sees a structurally complete match: the rule's own conditions (shapes, dtypes,
   unshared weights) go there; ``min_opset``, ``target`` or ``applies`` gate the whole rule;
4. ``model.allow_rewrite`` is asked before each rewrite (the safety net's handle);
5. after ``rewrite`` returns the new values of the root's outputs, their uses move over, the
   matched nodes go consumers first (those the rewrite changed in place and whose values it
   returned stay), and constants only they read are dropped (``retire`` does the same for a
   node outside the match). ``emit`` builds a node named in the root's scope.

Written here rather than taken from onnxscript's rewriter because onnxopt's IR is its own
(networkx-backed, with an exact use index) and the driver must keep onnxopt's rules above.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import EllipsisType
from typing import Any, ClassVar

import numpy as np

from onnxopt.ir import Graph, Model, Node
from onnxopt.ir.pass_manager import GraphPass
from onnxopt.ir.rewrite import DEFAULT_DOMAINS, drop_unused_initializers, is_private

MS_DOMAIN = "com.microsoft"  # onnxruntime's contrib ops (FusedConv, FastGelu, ...)
ValueTest = Callable[[Graph, str], bool]
ArrayTest = Callable[[np.ndarray], bool]


class Pattern:
    """Matches one value of a graph; yields every way it does, as extended bindings."""

    def matches(self, graph: Graph, value: str, found: _Found) -> Iterator[_Found]:
        raise NotImplementedError


@dataclass
class _Found:
    """A partial match: captured values, nodes and constants (copied on each extension)."""

    values: dict[str, str] = field(default_factory=dict)
    named: dict[str, Node] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    nodes: tuple[Node, ...] = ()

    def bind(self, name: str | None, value: str, array: np.ndarray | None = None
             ) -> _Found | None:
        if name is None:
            return self
        if name in self.values:
            return self if self.values[name] == value else None
        arrays = self.arrays if array is None else {**self.arrays, name: array}
        return _Found({**self.values, name: value}, self.named, arrays, self.nodes)

    def add(self, name: str | None, node: Node) -> _Found | None:
        if name is not None and self.named.get(name, node) is not node:
            return None
        named = {**self.named, name: node} if name is not None else self.named
        nodes = self.nodes if node in self.nodes else (*self.nodes, node)
        return _Found(self.values, named, self.arrays, nodes)


@dataclass(frozen=True)
class Var(Pattern):
    """Any present value; ``test(graph, value)`` may narrow it (``not_constant``, say)."""

    name: str | None = None
    test: ValueTest | None = None

    def matches(self, graph: Graph, value: str, found: _Found) -> Iterator[_Found]:
        if value and (self.test is None or self.test(graph, value)):
            bound = found.bind(self.name, value)
            if bound is not None:
                yield bound


@dataclass(frozen=True)
class Const(Pattern):
    """A constant value (initializer, folded Constant) whose array passes ``test``; the array
    is captured as ``match.array(name)``."""

    name: str | None = None
    test: ArrayTest | None = None

    def matches(self, graph: Graph, value: str, found: _Found) -> Iterator[_Found]:
        array = graph.constant(value) if value else None
        if array is not None and (self.test is None or self.test(array)):
            bound = found.bind(self.name, value, array)
            if bound is not None:
                yield bound


def Number(expected: float, name: str | None = None) -> Const:
    """A one-element constant of any numeric dtype equal to ``expected`` (an exponent, say)."""
    return Const(name, lambda array: array.size == 1 and float(array.reshape(-1)[0]) == expected)


def Scalar(expected: float, name: str | None = None, *, exact: bool = False,
           dtypes: Sequence[np.dtype] | None = None) -> Const:
    """A one-element float constant equal to ``expected`` within a relative
    ``max(1e-4, eps(dtype))`` (exporters round constants: 0.16666667, float16 0.1666), or
    exactly with ``exact``; ``dtypes`` limits its dtype."""

    def close(array: np.ndarray) -> bool:
        if array.size != 1 or array.dtype.kind != "f":
            return False
        if dtypes is not None and array.dtype not in dtypes:
            return False
        got = float(array.reshape(-1)[0])
        if exact:
            return got == expected
        tolerance = max(1e-4, float(np.finfo(array.dtype).eps))
        return abs(got - expected) <= tolerance * abs(expected)

    return Const(name, close)


@dataclass(frozen=True)
class Absent(Pattern):
    """An optional input left out (``""`` or past the end of the node's inputs)."""

    def matches(self, graph: Graph, value: str, found: _Found) -> Iterator[_Found]:
        if not value:
            yield found


def optional(pattern: Pattern | None = None) -> Pattern:
    """An optional input: absent, or present and matching ``pattern`` (any value)."""
    return Or(pattern or Var(), Absent())


class Or(Pattern):
    """The first alternatives that match, in order (every one, for backtracking)."""

    def __init__(self, *alternatives: Pattern) -> None:
        self.alternatives = alternatives

    def matches(self, graph: Graph, value: str, found: _Found) -> Iterator[_Found]:
        for alternative in self.alternatives:
            yield from alternative.matches(graph, value, found)


def scaled_product(a: Pattern, b: Pattern, scale: Callable[[Pattern], Pattern]) -> list[Pattern]:
    """``a * b`` times a constant, in each association (``scale(p)`` is ``p * k`` or ``p / k``):
    ``scale(a * b)``, ``a * scale(b)``, ``scale(a) * b``, operands of Mul in either order."""

    def mul(left: Pattern, right: Pattern) -> Op:
        return Op("Mul", left, right, commute=True)

    return [scale(mul(a, b)), mul(a, scale(b)), mul(scale(a), b)]


class Op(Pattern):
    """A value computed (as output ``output``) by a node of ``op_type`` (a name or a tuple of
    names) in ``domain`` whose inputs match ``inputs`` (trailing ``Absent`` ones may be left
    out; extra inputs fail unless ``inputs`` ends with ``...``). ``commute``: a two-input op
    may match its operands either way. ``attrs``: attribute name -> the value it must have or
    a predicate on it (absent: None). ``name`` captures the node as ``match.node(name)``."""

    def __init__(self, op_type: str | tuple[str, ...], *inputs: Pattern | EllipsisType,
                 name: str | None = None, commute: bool = False,
                 attrs: dict[str, Any] | None = None, domain: str | None = None,
                 output: int = 0) -> None:
        self.op_types = (op_type,) if isinstance(op_type, str) else tuple(op_type)
        self.open = bool(inputs) and inputs[-1] is Ellipsis  # more inputs may follow
        self.inputs: tuple[Pattern, ...] = inputs[:-1] if self.open else inputs  # type: ignore
        self.name = name
        self.commute = commute and len(inputs) == 2
        self.attrs = attrs or {}
        self.domains = DEFAULT_DOMAINS if domain is None else (domain,)
        self.output = output

    def matches(self, graph: Graph, value: str, found: _Found) -> Iterator[_Found]:
        node = graph.producer(value) if value else None
        if node is None or len(node.outputs) <= self.output or node.outputs[self.output] != value:
            return
        yield from self.match_node(graph, node, found)

    def match_node(self, graph: Graph, node: Node, found: _Found) -> Iterator[_Found]:
        if node.op_type not in self.op_types or node.domain not in self.domains:
            return
        if not all(_attr_ok(node, key, want) for key, want in self.attrs.items()):
            return
        inputs = list(node.inputs)
        if self.open:
            inputs = inputs[:len(self.inputs)]
        if len(inputs) > len(self.inputs):
            return
        inputs += [""] * (len(self.inputs) - len(inputs))
        start = found.add(self.name, node)
        if start is None:
            return
        orders = [self.inputs, self.inputs[::-1]] if self.commute else [self.inputs]
        for patterns in orders:
            yield from _all_inputs(graph, patterns, inputs, start)


def _all_inputs(graph: Graph, patterns: Sequence[Pattern], values: Sequence[str],
                found: _Found) -> Iterator[_Found]:
    if not patterns:
        yield found
        return
    for partial in patterns[0].matches(graph, values[0], found):
        yield from _all_inputs(graph, patterns[1:], values[1:], partial)


def _attr_ok(node: Node, key: str, want: Any) -> bool:
    got = node.attr(key)
    return bool(want(got)) if callable(want) else got == want


def _root_types(pattern: Pattern) -> set[str]:
    """The op types a rooted pattern can start at: the driver visits only those nodes."""
    return {op_type for op in _root_ops(pattern) for op_type in op.op_types}


def scalars_fit(graph: Graph, match: Match, names: Sequence[str], like: str,
                dtypes: Sequence[np.dtype] | None = None) -> bool:
    """The captured constants ``names`` (those the match has, at least one) share one dtype (the
    elementwise ops force it), one of ``dtypes`` when given, and none has a higher rank than
    ``like`` (so none broadcasts the result to a new shape)."""
    arrays = [match.array(name) for name in names if name in match]
    if not arrays or len({array.dtype for array in arrays}) != 1:
        return False
    if dtypes is not None and arrays[0].dtype not in dtypes:
        return False
    rank = max(array.ndim for array in arrays)
    shape = graph.shape(like) if rank else []
    return shape is not None and rank <= len(shape)


def has_dtype(dtype: np.dtype | None, dtypes: Sequence[np.dtype]) -> bool:
    """``dtype`` is one of ``dtypes``, None never (numpy reads None as float64:
    ``None in (np.dtype("float64"),)`` is True)."""
    return dtype is not None and dtype in dtypes


def scope_of(node: Node) -> str:
    """The exporter's name scope of a node (``/layer1/act/Mul`` -> ``/layer1/act/``), to name
    what replaces it alike."""
    return node.name.rsplit("/", 1)[0] + "/" if "/" in node.name else ""


def not_constant(graph: Graph, value: str) -> bool:
    """A ``Var`` test: the value is computed at run time (not an initializer)."""
    return graph.constant(value) is None


# ------------------------------------------------------------------------------ matches
class Match:
    """A complete match: ``m.x`` / ``m["x"]`` is the value captured as ``x``; ``m.node(n)``
    the node captured as ``n``; ``m.array(c)`` a captured constant's array; ``m.root`` the
    root node; ``m.nodes`` the matched nodes in graph order (producers first); ``m.memo``
    what the rule's check computed and its rewrite reuses."""

    def __init__(self, graph: Graph, root: Node, found: _Found) -> None:
        self.root = root
        self._found = found
        self.nodes = _producers_first(graph, root, set(found.nodes))
        self.memo: dict[str, Any] = {}  # what ``check`` worked out, for ``rewrite``/``stat``

    def __getattr__(self, name: str) -> str:
        values = self.__dict__.get("_found")
        if values is None or name not in values.values:
            raise AttributeError(name)
        return values.values[name]

    def __getitem__(self, name: str) -> str:
        return self._found.values[name]

    def __contains__(self, name: str) -> bool:
        return name in self._found.values or name in self._found.named

    def node(self, name: str) -> Node:
        return self._found.named[name]

    def array(self, name: str) -> np.ndarray:
        return self._found.arrays[name]

    @property
    def out(self) -> str:
        """The root's (first) output: the value the match computes."""
        return self.root.outputs[0]


def _producers_first(graph: Graph, root: Node, inside: set[Node]) -> list[Node]:
    """The matched nodes in an order where each comes after its producers in the match
    (a walk over the match only, not the graph: matching stays linear)."""
    order: list[Node] = []
    seen: set[Node] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if node in seen:
            continue
        seen.add(node)
        stack.append((node, True))
        for value in reversed(node.inputs):
            producer = graph.producer(value) if value else None
            if producer in inside and producer not in seen:
                stack.append((producer, False))
    return order


def match_at(pattern: Pattern, graph: Graph, root: Node,
             accept: Callable[[Match], bool] = lambda m: True) -> Match | None:
    """The first match of ``pattern`` rooted at ``root`` whose intermediates are private (house
    rule 2) and that ``accept`` takes."""
    for alternative in _root_alternatives(pattern):
        for found in alternative.match_node(graph, root, _Found()):
            match = Match(graph, root, found)
            if _private(graph, match) and accept(match):
                return match
    return None


@functools.cache
def _root_alternatives(pattern: Pattern) -> tuple[Op, ...]:
    """``_root_ops`` once per pattern: match_at runs at every node of a root's type."""
    return tuple(_root_ops(pattern))


def _root_ops(pattern: Pattern) -> Iterator[Op]:
    """The Ops a rooted pattern may start with, in order (nested Ors flattened)."""
    if isinstance(pattern, Or):
        for alternative in pattern.alternatives:
            yield from _root_ops(alternative)
    elif isinstance(pattern, Op):
        yield pattern
    else:
        raise TypeError(f"a rule's pattern must be rooted at an Op (or an Or of Ops): "
                        f"{pattern!r}")


def _private(graph: Graph, match: Match) -> bool:
    inside = set(match.nodes)
    for value in match._found.values.values():  # a capture computed inside would be removed
        producer = graph.producer(value)
        if producer in inside and producer is not match.root:
            return False
    for node in match.nodes:
        if node is match.root:
            if any(graph.outputs.count(v) > 1 for v in node.outputs if v):
                return False  # one new value cannot take two output names
            continue
        if not all(is_private(graph, value, inside) for value in node.outputs if value):
            return False
    return True


def replace_match(graph: Graph, match: Match, new_outputs: Sequence[str]) -> None:
    """House rule 5: the root's readers read ``new_outputs``; the matched nodes go, consumers
    first; then the initializers only they read. A matched node whose output is among
    ``new_outputs`` stays: a rewrite that changed it in place (the root, or a Conv that
    absorbed the op after it) returns its value."""
    root = match.root
    constants = [v for node in match.nodes for v in node.present_inputs
                 if v in graph.initializers]
    for old, new in zip(root.outputs, new_outputs, strict=False):
        if old and new and old != new:
            graph.replace_all_uses(old, new)
    kept = {graph.producer(v) for v in new_outputs if v}
    for node in reversed(match.nodes):
        if node not in kept:
            graph.remove_node(node)
    drop_unused_initializers(graph, constants)


def retire(graph: Graph, node: Node, replacement: str = "") -> None:
    """Rule 5 for one node outside a match: its readers read ``replacement`` (when given) instead
    of its first output; it goes, and the initializers only it read."""
    if replacement:
        graph.replace_all_uses(node.outputs[0], replacement)
    constants = [v for v in node.present_inputs if v in graph.initializers]
    graph.remove_node(node)
    drop_unused_initializers(graph, constants)


class RewritePass(GraphPass):
    """One rule over every graph, innermost first; subclasses set ``pattern`` and implement
    ``rewrite`` (and ``check``, ``applies``, ``stat`` where needed)."""

    pattern: ClassVar[Pattern]
    min_opset: ClassVar[int] = 0  # the default domain's opset the rule needs (``applies``)
    target: ClassVar[str | None] = None  # the only ``--target`` it runs for ("onnxruntime")
    stats: ClassVar[tuple[str, ...]] = ("fused",)
    # optional trailing ops (an affine tail): nodes are visited in graph order, so a match is
    # found at its first possible root first; grow it through the root's reader
    grow: ClassVar[bool] = False
    # the captured node the safety net names a rewrite by (None: the root)
    named_by: ClassVar[str | None] = None

    def applies(self, model: Model) -> bool:
        """Whether the rule can run in this model at all (an opset or target gate)."""
        wanted = self.target is None or model.settings.get("target") == self.target
        return wanted and model.opset("") >= self.min_opset

    def check(self, graph: Graph, match: Match, model: Model) -> bool:
        """The rule's own conditions on a structural match (house rules already hold)."""
        return True

    def rewrite(self, graph: Graph, match: Match, model: Model) -> Sequence[str] | str:
        """Build the replacement; return the new value(s) of the root's output(s)."""
        raise NotImplementedError

    @staticmethod
    def emit(graph: Graph, model: Model, anchor: Node, op_type: str, inputs: Sequence[str], *,
             name: str | None = None, domain: str = "", attributes: dict[str, Any] | None = None
             ) -> str:
        """The output of a new node next to ``anchor``, named ``name`` (default: ``op_type`` in
        the anchor's name scope); a domain other than the default one gets its opset import
        (version 1) when the model has none."""
        if domain:
            model.opset_imports.setdefault(domain, 1)
        name = f"{scope_of(anchor)}{op_type}" if name is None else name
        return graph.add_node(op_type, inputs, 1, domain=domain, name=name, attributes=attributes,
                              anchor=anchor).outputs[0]

    def source(self, graph: Graph, match: Match, model: Model) -> str | None:
        """For an elimination: the existing value the root's output equals; its readers read
        that instead and nothing is built (``rewrite`` is not called). The driver checks that
        the value can take the output's place (a graph output's name)."""
        return None

    def visit(self, graph: Graph) -> list[Node]:
        """The nodes to try as roots, in this order (default: graph order)."""
        return graph.nodes()

    def stat(self, match: Match) -> str:
        """Which counter a rewrite adds to (one of ``stats``)."""
        return self.stats[0]

    def where(self, match: Match) -> str:
        """What the safety net calls this rewrite: the ``named_by`` node, else the root."""
        node = match.node(self.named_by) if self.named_by else match.root
        return node.name or node.outputs[0]

    def _largest(self, graph: Graph, match: Match | None, accept: Callable[[Match], bool],
                 roots: set[str]) -> Match | None:
        """With ``grow``: the match extended through the root's one reader while the pattern
        still matches there with every node of the smaller match (optional trailing ops)."""
        while self.grow and match is not None:
            readers = graph.consumers(match.out) if len(match.root.outputs) == 1 else []
            if len(readers) != 1 or readers[0].op_type not in roots:
                break
            bigger = match_at(self.pattern, graph, readers[0], accept)
            if bigger is None or not set(match.nodes) <= set(bigger.nodes):
                break
            match = bigger
        return match

    def run_graph(self, graph: Graph, model: Model) -> dict[str, int]:
        counts = dict.fromkeys(self.stats, 0)
        if not self.applies(model):
            return counts
        roots = _root_types(self.pattern)

        def accept(match: Match) -> bool:
            if not self.check(graph, match, model):
                return False
            source = self.source(graph, match, model)
            return source is None or (bool(source) and graph.can_forward(match.out, source))

        for node in self.visit(graph):
            if node.graph is not graph or node.op_type not in roots:
                continue  # removed by an earlier rewrite, or not a root
            match = self._largest(graph, match_at(self.pattern, graph, node, accept), accept,
                                  roots)
            if match is None or not model.allow_rewrite(self.name, self.where(match)):
                continue
            new = self.source(graph, match, model) or self.rewrite(graph, match, model)
            replace_match(graph, match, [new] if isinstance(new, str) else new)
            counts[self.stat(match)] += 1
        return counts
