"""Compiled calls that skip torch.compile's per-call entry, for calls that repeat their shapes.

A decode step calls every decoder layer with the shapes of the step before; only the
cache position moves. Through torch.compile each such call spends 120-140 us before the
compiled code runs (134.5 M benchmark model, q8_0, 2-core VM: ~375 us per layer call, of
which the inductor code itself takes ~240): Dynamo walks the layer's object tree to check
its guards and gather its weights, then AOT autograd's wrappers run. At 30 layers that is
~4 ms of a ~20 ms token.

Prompt chunks go the same way, with their row count symbolic too (`varying_dims`). There the
gain is at loading, where Dynamo rewrote the layer's bytecode once per shape family: a warm
load of the 115.6 M benchmark model at q8_0 took 12.6-15.3 s against 14.9-17.3 s (2-core VM).

`FixedShapeStep` does that walk once per layer. At a call with new shapes it traces the
function (make_fx on fake tensors) into one graph whose inputs are the module's tensors,
fixed in shape, then the other arguments' tensors and ints; those stay symbolic where the
argument's class declares that they grow (`symbolic_fields`: the KV cache's position and
capacity). Inductor compiles that graph (standalone_compile). Later calls take the module's
tensors from a list kept per module, check the shape conditions the trace relied on (the
ShapeEnv's guards, one expression over the symbolic inputs), call the compiled graph, and
set the ints the function assigned on its arguments (cache.offset), which the graph returns.

What it assumes, and checks where it can:
- the first argument (a layer) keeps its tensors once the model is loaded: they are
  gathered at its first call;
- the function reads no tensor that is not reachable from its arguments (a tensor baked
  into the trace makes it refuse) and assigns nothing on the module, only ints on the
  other arguments;
- whatever it cannot trace or compile, and shapes whose conditions keep failing, go to the
  torch.compile step it wraps, which is as correct, only slower per call.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from types import FunctionType, MethodType

import numpy as np
import torch
import torch._inductor
from torch._dynamo.source import LocalSource
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx
from torch.fx.experimental.symbolic_shapes import SYMPY_INTERP, DimDynamic, ShapeEnv, StatelessSymbolicContext
from torch.utils import _pytree as pytree

from mistralrs.backends.ops import Ops

# Traces per shape signature whose conditions failed (e.g. a sliding window filling up)
# before that signature is left to torch.compile.
MAX_TRACES_PER_SIGNATURE = 4
_PRIMITIVES = (int, float, bool, str, type(None))
_CONSTANTS = (*_PRIMITIVES, torch.dtype, torch.device)  # kept in a trace as they are


class Untraceable(Exception):
    """The call uses something this tracer does not handle; torch.compile takes it."""


# ---- arguments as leaves, a signature and a template to rebuild them from ---------------
def flatten(obj, leaves: list, objects: list, symbolic=None):
    """(signature, template) of `obj`; its tensors and symbolic ints are appended to `leaves`,
    its objects to `objects` (each after its children, the order `rebuild` makes them in).

    `leaves` holds (value, dims): dims is None for a fixed tensor, the tuple of symbolic
    dims for a growing one, and () for a symbolic int. The signature is hashable and
    equal for two calls exactly when one trace serves both.
    """
    if isinstance(obj, torch.Tensor):
        dims = tuple(symbolic) if symbolic else None
        leaves.append((obj, dims))
        shape = tuple(None if d in (dims or ()) else s for d, s in enumerate(obj.shape))
        return ("tensor", obj.dtype, obj.device, shape, None if dims else obj.stride()), ("leaf", len(leaves) - 1)
    if type(obj) is int and symbolic is not None:
        leaves.append((obj, ()))
        return ("int",), ("leaf", len(leaves) - 1)
    if isinstance(obj, _CONSTANTS):
        return (type(obj), obj), ("const", obj)
    if isinstance(obj, (list, tuple)):
        parts = [flatten(item, leaves, objects) for item in obj]
        return (type(obj), tuple(s for s, _ in parts)), (type(obj), [t for _, t in parts])
    if isinstance(obj, np.ndarray):  # specs keep host copies of small tables (rope frequencies)
        return ("array", obj.dtype.str, obj.shape, obj.tobytes()), ("const", obj)
    if isinstance(obj, Ops):  # the backend object is shared by every layer, not part of one
        return ("ops", id(obj)), ("const", obj)
    if isinstance(obj, MethodType) and isinstance(obj.__self__, Ops):  # e.g. the MLP's activation
        return ("method", obj.__func__), ("const", obj)
    if isinstance(obj, (FunctionType, type)):
        return ("function", obj), ("const", obj)
    if hasattr(obj, "__dict__") and type(obj).__module__.startswith("mistralrs."):
        fields = getattr(type(obj), "symbolic_fields", {})
        parts = {name: flatten(value, leaves, objects, fields.get(name)) for name, value in vars(obj).items()}
        objects.append(obj)
        signature = (type(obj), tuple((name, s) for name, (s, _) in parts.items()))
        return signature, ("object", type(obj), {name: t for name, (_, t) in parts.items()})
    raise Untraceable(f"cannot trace an argument of type {type(obj).__name__}")


def rebuild(template, leaves: list, made: list):
    """A copy of the flattened value with `leaves` in place of its tensors; new objects go to `made`."""
    kind = template[0]
    if kind == "leaf":
        return leaves[template[1]]
    if kind == "const":
        return template[1]
    if kind in (list, tuple):
        return kind(rebuild(t, leaves, made) for t in template[1])
    obj = object.__new__(template[1])  # bypasses __init__ and frozen dataclasses' __setattr__
    obj.__dict__.update({name: rebuild(t, leaves, made) for name, t in template[2].items()})
    made.append(obj)
    return obj


class _Flat:
    __slots__ = ("signature", "template", "leaves", "values", "objects")

    def __init__(self, obj, symbolic_ok: bool, symbolic: tuple[int, ...] | None = None):
        self.leaves: list = []
        self.objects: list = []
        self.signature, self.template = flatten(obj, self.leaves, self.objects, symbolic)
        self.values = [value for value, _ in self.leaves]  # the graph's arguments, in order
        if not symbolic_ok and any(dims is not None for _, dims in self.leaves):
            raise Untraceable("the module holds growing fields")


# ---- one traced and compiled graph -------------------------------------------------------
class _Graph:
    """A compiled trace: the condition it holds under, and where its extra outputs go."""

    def __init__(self, compiled, guard, symbolic_positions, out_spec, out_count, assigned):
        self.compiled, self.guard = compiled, guard
        self.symbolic_positions = symbolic_positions  # argument positions the guard reads
        self.out_spec, self.out_count = out_spec, out_count
        self.assigned = assigned  # [(input object index, attribute, graph output index | ("const", v))]


def _fake_inputs(leaves: list):
    env = ShapeEnv()
    mode = FakeTensorMode(shape_env=env)
    fakes = []
    for i, (value, dims) in enumerate(leaves):
        source = LocalSource(f"t{i}")
        if not isinstance(value, torch.Tensor):
            fakes.append(env.create_unspecified_symint_and_symbol(value, source, DimDynamic.DYNAMIC))
        elif dims:
            sizes = [DimDynamic.DYNAMIC if d in dims else DimDynamic.STATIC for d in range(value.dim())]
            fakes.append(mode.from_tensor(value, source=source,
                                          symbolic_context=StatelessSymbolicContext(dynamic_sizes=sizes)))
        else:
            fakes.append(mode.from_tensor(value, static_shapes=True))
    return env, mode, fakes


def _guard_function(env: ShapeEnv, fakes: list, positions: list[int]):
    """The trace's shape conditions as a function of the symbolic arguments (True: it holds)."""
    code = env.produce_guards_expression([fakes[p] for p in positions])
    if not code:
        return lambda *_: True
    names = [f"t{i}" for i in range(len(positions))]
    # produce_guards_expression writes L['t0']...; as plain parameters they cost no dict.
    body = re.sub(r"L\['(t\d+)'\]", r"\1", code)
    return eval(f"lambda {', '.join(names) or '*_'}: {body}", dict(SYMPY_INTERP))  # noqa: S307 - torch's own text


def _assigned(obj, before: dict) -> list[str]:
    """Attributes of `obj` that are no longer the objects `before` held (by identity)."""
    after = vars(obj)
    if set(after) != set(before):
        raise Untraceable("the function adds or deletes attributes of its arguments")
    return [name for name, value in after.items() if value is not before[name]
            and not (isinstance(value, _PRIMITIVES) and type(value) is type(before[name]) and value == before[name])]


@contextlib.contextmanager
def _compiling_flag():
    # Code that caches across calls (the rope table) checks torch.compiler.is_compiling();
    # a make_fx trace must see True, as a Dynamo trace does.
    previous = torch.compiler._is_compiling_flag
    torch.compiler._is_compiling_flag = True
    try:
        yield
    finally:
        torch.compiler._is_compiling_flag = previous


def trace_and_compile(fn: Callable, module: _Flat, inputs: list[_Flat]) -> _Graph:
    split = len(module.leaves)
    offsets, leaves = [], list(module.leaves)
    for flat in inputs:
        offsets.append(len(leaves))
        leaves.extend(flat.leaves)
    env, mode, fakes = _fake_inputs(leaves)
    record: dict = {}

    def traced(*args):
        module_made, input_made = [], []
        module_copy = rebuild(module.template, list(args[:split]), module_made)
        input_copies = [rebuild(flat.template, list(args[offset:offset + len(flat.leaves)]), input_made)
                        for flat, offset in zip(inputs, offsets, strict=True)]
        module_before = [dict(vars(o)) for o in module_made]
        input_before = [dict(vars(o)) for o in input_made]
        result = fn(module_copy, *input_copies)
        if any(_assigned(o, before) for o, before in zip(module_made, module_before, strict=True)):
            raise Untraceable("the function assigns attributes of the module")
        out_flat, record["spec"] = pytree.tree_flatten(result)
        if not all(isinstance(t, torch.Tensor) for t in out_flat):
            raise Untraceable("the function returns something other than tensors")
        extra, assigned = [], []
        for index, (obj, before) in enumerate(zip(input_made, input_before, strict=True)):
            for name in _assigned(obj, before):
                value = vars(obj)[name]
                if isinstance(value, torch.SymInt):  # computed from the symbolic inputs: a graph output
                    assigned.append((index, name, len(out_flat) + len(extra)))
                    extra.append(value)
                elif isinstance(value, _PRIMITIVES):  # the same for every call the guard admits
                    assigned.append((index, name, ("const", value)))
                else:
                    raise Untraceable(f"the function assigns {type(value).__name__} to an argument's .{name}")
        record["count"], record["assigned"] = len(out_flat), assigned
        return (*out_flat, *extra)

    with torch.no_grad(), _compiling_flag():
        graph = make_fx(traced, tracing_mode="fake")(*fakes)
    if any(node.op == "get_attr" for node in graph.graph.nodes):
        raise Untraceable("the function reads a tensor that is not among its arguments")
    positions = [split + i for i, (_, dims) in enumerate(leaves[split:]) if dims is not None]
    guard = _guard_function(env, fakes, positions)
    with torch._guards.tracing(torch._guards.TracingContext(mode)):
        compiled = torch._inductor.standalone_compile(graph, fakes, dynamic_shapes="from_tracing_context",
                                                      donate_graph_module=True)
    return _Graph(compiled, guard, [p - split for p in positions], record["spec"], record["count"],
                  record["assigned"])


# ---- the step ------------------------------------------------------------------------------
class FixedShapeStep:
    """`fn(module, *inputs)` through graphs traced per shape signature; `fallback` for the rest.

    `varying_dims` maps an input's position (0: the first after the module) to the dims of
    that tensor which change from call to call: a prompt chunk's row count. They stay symbolic
    in the trace like a growing field's, and the branches the function takes on them (fewer
    than 16 rows stream through the decode kernels) become its shape conditions, one trace
    per family (`max_traces` of them per signature).
    """

    def __init__(self, fn: Callable, fallback: Callable, varying_dims: dict[int, tuple[int, ...]] | None = None,
                 max_traces: int = MAX_TRACES_PER_SIGNATURE):
        self.fn, self.fallback = fn, fallback
        self.varying_dims = varying_dims or {}
        self.max_traces = max_traces
        # id(module) -> (the module, kept alive so its id stays its own; its flat form; a small
        # number standing for its signature, cheaper to hash on every call than the signature)
        self._modules: dict[int, tuple[object, _Flat | None, int]] = {}
        self._module_kinds: dict[tuple, int] = {}
        self._graphs: dict[tuple, list[_Graph] | None] = {}  # None: left to the fallback
        self.traces = 0  # graphs compiled so far
        self.refusals: list[str] = []  # why signatures went to the fallback (for tests and debugging)

    def _module(self, module) -> tuple[_Flat | None, int]:
        entry = self._modules.get(id(module))
        if entry is None or entry[0] is not module:
            try:
                flat = _Flat(module, symbolic_ok=False)
                kind = self._module_kinds.setdefault(flat.signature, len(self._module_kinds))
            except Untraceable as error:
                self.refusals.append(f"module {type(module).__name__}: {error}")
                flat, kind = None, -1
            entry = self._modules[id(module)] = (module, flat, kind)
        return entry[1], entry[2]

    def __call__(self, module, *inputs):
        flat_module, kind = self._module(module)
        if flat_module is None:
            return self.fallback(module, *inputs)
        try:
            flat_inputs = [_Flat(x, symbolic_ok=True, symbolic=self.varying_dims.get(i)) for i, x in enumerate(inputs)]
        except Untraceable:
            return self.fallback(module, *inputs)
        key = (kind, tuple(f.signature for f in flat_inputs))
        graphs = self._graphs.get(key, [])
        if graphs is None:
            return self.fallback(module, *inputs)
        args = [value for flat in flat_inputs for value in flat.values]
        for graph in graphs:
            if graph.guard(*(args[p] for p in graph.symbolic_positions)):
                return self._run(graph, flat_module, args, flat_inputs)
        if len(graphs) >= self.max_traces:
            self.refusals.append(f"the shape conditions failed after {len(graphs)} traces")
            self._graphs[key] = None
            return self.fallback(module, *inputs)
        try:
            graph = trace_and_compile(self.fn, flat_module, flat_inputs)
        except Exception as error:  # noqa: BLE001 - whatever fails here, the fallback runs the call
            # Untraceable, or a tracer or compiler failure: the torch.compile step handles this
            # signature (and reports an error in the inputs themselves when it runs them).
            self.refusals.append(f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
            self._graphs[key] = None
            return self.fallback(module, *inputs)
        self.traces += 1
        self._graphs[key] = [*graphs, graph]
        if not graph.guard(*(args[p] for p in graph.symbolic_positions)):
            return self.fallback(module, *inputs)  # (not expected: the trace saw these values)
        return self._run(graph, flat_module, args, flat_inputs)

    @staticmethod
    def _run(graph: _Graph, module: _Flat, args: list, inputs: list[_Flat]):
        outputs = graph.compiled(*module.values, *args)
        if graph.assigned:
            objects = [obj for flat in inputs for obj in flat.objects]
            for index, name, where in graph.assigned:
                setattr(objects[index], name, where[1] if isinstance(where, tuple) else outputs[where])
        return pytree.tree_unflatten(list(outputs[: graph.out_count]), graph.out_spec)

