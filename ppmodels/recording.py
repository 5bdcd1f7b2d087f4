r"""One call's ATen operations, recorded as it runs, as an FX graph (to run as recorded, or to
compile).

**Why not ``make_fx``.** ``torch.fx.experimental.proxy_tensor.make_fx(tracing_mode="real")``
records the same operations, but it also builds fake-tensor metadata for every node (in real
mode a new ``FakeTensorMode`` for each output it describes). On this project's 2-core CPU that
made a capture of the VAE's step (189 operations, its backward included) take 0.17 s, about
0.9 ms an operation, where the step itself takes 2–5 ms. The fast path's graph needs none of
that metadata: it is run as recorded, or handed to ``torch.compile``, which derives its own.
:func:`record` is a ``TorchDispatchMode`` that writes each operation into a ``torch.fx.Graph``
as it runs, for the price of one Python call an operation.

**What is recorded.** Operations reach the mode below autograd, so the graph holds what ran,
the backward pass's operations included when the call differentiates inside (the autograd
engine runs them under the same mode). A tensor is the graph's input if it is (by identity)
one of ``inputs``; a tensor made by a recorded operation is that operation's output; any other
tensor the call reads (a buffer, a constant) is recorded as a constant, by reference. Python
control flow is frozen as recorded, so a caller must check the graph against the call it
replaces (:mod:`ppmodels.compiled` does). A Python value the call reads from a tensor's data
(``.item()``, ``float()``, ``bool()`` and so an ``if`` on a tensor, ``tolist()``, ``numpy()``,
``torch.equal``, ``F.one_hot`` without ``num_classes``) would be frozen too, and that check,
made on one input, cannot see a branch that another input takes: :func:`record` raises
:class:`ReadsValues` instead. Those reads are watched where the program makes them, by a
``TorchFunctionMode``, not below: the range checks inside an operation (``F.one_hot`` reads
its input's minimum and maximum) only raise, and are no read of the program's.

**Running it.** An ATen overload called from Python (``torch.ops.aten.view.default``) goes
through the generic operator binding, 2–3 µs a call here, against about 1 µs for torch's
generated bindings (``Tensor.view``): about 0.4 ms of a 189-operation step.
``record(..., python_bindings=True)`` binds each operation to torch's binding of the same name
(the same schema; the binding resolves the overload from the recorded argument types); an
operation without one keeps its overload. Only generated bindings (C functions) count: a
``torch.Tensor`` method written in Python may share an operator's name and not its schema
(``Tensor.index`` is first-class dimensions' ``index(positions, dims)``, not ``aten::index``).
A graph for ``torch.compile`` keeps the overloads.
"""

from __future__ import annotations

import operator
import types
from typing import Any, Callable, Sequence

import torch
from torch import Tensor
from torch.fx import Graph, GraphModule, Node
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

__all__ = ["record", "ReadsValues"]

#: torch functions whose result is a Python value computed from a tensor's data
_VALUE_READS = frozenset([Tensor.item, Tensor.__bool__, Tensor.__float__, Tensor.__int__, Tensor.__index__,
                          Tensor.__complex__, Tensor.tolist, Tensor.numpy, Tensor.equal, Tensor.allclose, torch.equal,
                          torch.allclose])


class ReadsValues(Exception):
    """The recorded call read Python values from tensors' data: a graph would keep them."""


class _ValueReads(TorchFunctionMode):
    """Names the torch functions by which the program reads Python values from tensors' data."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _VALUE_READS:
            self.reads.append(func.__name__)
        elif func is F.one_hot and (args[1] if len(args) > 1 else kwargs.get("num_classes", -1)) == -1:
            self.reads.append("one_hot without num_classes")
        return func(*args, **kwargs)


class _Recorder(TorchDispatchMode):
    """Writes every operation it sees into ``graph``; ``nodes`` maps ``id`` of each tensor seen
    to its node (``keep`` holds the tensors, so that no ``id`` is reused while recording)."""

    def __init__(self, graph: Graph) -> None:
        super().__init__()
        self.graph = graph
        self.nodes: dict[int, Node] = {}
        self.constants: dict[str, Tensor] = {}
        self.keep: list[Tensor] = []

    def node_of(self, t: Tensor) -> Node:
        node = self.nodes.get(id(t))
        if node is None:  # read, not made here: a constant, by reference
            name = f"_constant{len(self.constants)}"
            self.constants[name] = t
            node = self.nodes[id(t)] = self.graph.get_attr(name)
            self.keep.append(t)
        return node

    def arg(self, a: Any) -> Any:
        return self.node_of(a) if isinstance(a, Tensor) else a

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        node = self.graph.call_function(func, tree_map(self.arg, tuple(args)), tree_map(self.arg, kwargs))
        out = func(*args, **kwargs)
        if isinstance(out, Tensor):
            self.nodes[id(out)] = node  # an in-place operation's result is its input: it now means this node
            self.keep.append(out)
            node.meta["dtype"] = out.dtype
        elif isinstance(out, (tuple, list)):
            for i, o in enumerate(out):
                if isinstance(o, Tensor):
                    self.nodes[id(o)] = self.graph.call_function(operator.getitem, (node, i))
                    self.keep.append(o)
        return out


def record(fn: Callable[..., Any], inputs: Sequence[Tensor], python_bindings: bool = False) -> GraphModule:
    """``fn(*inputs)``, run once, with its tensor operations recorded: a ``GraphModule`` whose
    arguments are ``inputs`` and whose output has ``fn``'s structure (tensors, and anything else
    as returned); a node that made one tensor has its dtype in ``node.meta["dtype"]``. Operations
    whose results nothing reads are dropped (``eliminate_dead_code``, which keeps in-place and
    random ones). ``python_bindings``: each ATen operation calls
    torch's Python binding of the same name, where there is one (see the module's docstring).
    What is frozen: see the module's docstring. Raises :class:`ReadsValues` if the call read a
    Python value from a tensor's data."""
    graph = Graph()
    recorder = _Recorder(graph)
    for i, t in enumerate(inputs):
        node = graph.placeholder(f"input{i}")
        recorder.nodes.setdefault(id(t), node)  # the same tensor twice: its first position is read
        recorder.keep.append(t)
    reads = _ValueReads()
    with reads, recorder:
        out = fn(*inputs)
    if reads.reads:
        names = ", ".join(sorted({"__bool__ (an if on a tensor)" if r == "__bool__" else r for r in reads.reads}))
        raise ReadsValues(f"reads {len(reads.reads)} Python value(s) from tensors ({names}): a graph would keep the "
                          "first batch's")
    graph.output(tree_map(recorder.arg, out))
    graph.eliminate_dead_code()
    if python_bindings:
        for node in graph.nodes:
            binding = _binding(node.target) if node.op == "call_function" else None
            if binding is not None:
                node.target = binding
    return GraphModule(recorder.constants, graph)


def _binding(target: Any) -> Callable[..., Any] | None:
    """torch's Python binding named as the ATen overload ``target``'s operator, or None."""
    if not isinstance(target, torch._ops.OpOverload) or target.namespace != "aten":
        return None
    name = target.overloadpacket.__name__
    for namespace in (torch._C._VariableFunctions, torch._C._nn, torch._C._special, torch._C._linalg, torch.Tensor):
        binding = getattr(namespace, name, None)
        if isinstance(binding, _GENERATED):
            return binding
    return None


#: the types of torch's generated Python bindings: functions of ``torch._C``'s namespaces, and
#: ``torch.Tensor``'s methods defined in C (not those written in Python, such as ``Tensor.index``)
_GENERATED = (types.BuiltinFunctionType, types.MethodDescriptorType)
