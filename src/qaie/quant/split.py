"""Split the network at its instance-norm statistics, so a photo of any size can be enhanced
in tiles and still get the whole-photo result (see qaie.runtime.wholephoto, which runs the stages).

Every InstanceNorm takes its mean and variance over the whole tensor it is given; everything
else in the network is local (convolutions, pools, resizes). Cut the graph where the five norm
statistics are read and it falls into six *stages*, each a purely local function of
whole-image feature maps. Stage k needs the statistics of norm k, which are reductions over
a feature map stage k-1 wrote in full. Running stage after stage over overlapping windows,
keeping the maps that cross stages, gives exactly the whole-image output with memory bounded
by a few int8 feature maps instead of every activation.

The split works on an exported graph: the FP32 network, or the quantized reference model
(`qaie.quant.quantize.convert`), so the stages carry exactly the trained scales. A crossing map of
a quantized graph is cut at its int8 tensor (the stage writes it quantized, the next one reads
it at the same scale): converted to LiteRT, stages pass int8 tensors, nothing is requantized.
The statistics themselves are computed outside the graph (`qaie.runtime.wholephoto.norm_statistics`)
from the chain of scales recorded here, the way the reference model computes them.
"""

from __future__ import annotations

import copy
import functools
import itertools
import string
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.fx import Graph, GraphModule, Node

from qaie.config import ModelConfig
from qaie.quant.fxgraph import DEQUANTIZE, QUANTIZE, is_op
from qaie.runtime.wholephoto import ALIGN

aten = torch.ops.aten

IMAGE = "image"
OUTPUT = "enhanced"


@dataclass
class Stages:
    """The stage graphs of one network at one (static) input size, and how they connect.

    `meta` is plain JSON (what `wholephoto.enhance_whole` reads): per stage its input and output
    names; per crossing map its downscale factor and channels; per norm the map it reduces
    and the quantization of each step of the statistics (None for FP32); the `halo`.
    """

    graphs: list[GraphModule]
    meta: dict = field(default_factory=dict)


def _op(name: str):
    """A quantized_decomposed op by its name (torchao has registered it when a graph has it)."""
    namespace, op, overload = name.split(".")
    return getattr(getattr(getattr(torch.ops, namespace), op), overload)


def _producer(node: Node) -> Node:
    """The compute op behind `node`, through dequantize/quantize pairs."""
    while is_op(node, DEQUANTIZE) or is_op(node, QUANTIZE):
        node = node.args[0]
    return node


def value_of(node: Node) -> Node:
    """What the rest of the graph reads of a compute op: its quantize node, if it has one."""
    users = list(node.users)
    return users[0] if len(users) == 1 and is_op(users[0], QUANTIZE) else node


def _qparams(node: Node) -> list[float] | None:
    """[scale, zero point] of a compute op's output, None when it is not quantized."""
    value = value_of(node)
    return [float(value.args[1]), int(value.args[2])] if value is not node else None


@dataclass
class _SecondPass:
    """A norm's statistics taken again from y = centered x rstd (`qaie.nn.model.SecondPass`)."""

    scaled: Node  # y
    mean: Node
    centered: Node
    square: Node
    var: Node
    rstd_square: Node  # rstd^2 of the first pass
    eps_rstd: Node  # eps x rstd^2
    var_eps: Node
    rstd: Node
    eps_q: list[float] | None

    def chain(self) -> dict:
        steps = ("scaled", "mean", "centered", "square", "var", "rstd_square", "eps_rstd", "var_eps", "rstd")
        return {s: _qparams(getattr(self, s)) for s in steps} | {"eps": self.eps_q}


@dataclass
class _Norm:
    input: Node  # the feature map normalised (a conv output)
    mean: Node  # mean over H, W
    centered: Node
    square: Node
    var: Node
    var_eps: Node
    rstd: Node
    eps: float
    eps_q: list[float] | None
    second: _SecondPass | None = None

    def statistics(self) -> dict[str, Node]:
        """The statistics the rest of the graph reads, by the name a stage takes them under."""
        stats = {"mean": self.mean, "rstd": self.rstd}
        if self.second is not None:
            stats |= {"mean_second": self.second.mean, "rstd_second": self.second.rstd}
        return stats

    def chain(self) -> dict | None:
        """The quantization of each step of the statistics; None for an FP32 graph."""
        steps = ("input", "mean", "centered", "square", "var", "var_eps", "rstd")
        params = {s: _qparams(getattr(self, s)) for s in steps}
        if params["mean"] is None:
            return None
        second = {"second": self.second.chain()} if self.second is not None else {}
        return {**params, "eps": self.eps_q, **second}


def _constant(arg: Node | float, owner: nn.Module) -> tuple[float, list[float] | None]:
    """A scalar constant of a norm (its eps) and, in a quantized graph, its [scale, zero]."""
    q = None
    if is_op(arg, DEQUANTIZE):  # a quantized constant: q(get_attr) -> dq
        quantize = arg.args[0]
        q = [float(quantize.args[1]), int(quantize.args[2])]
        arg = quantize.args[0]
    return (float(getattr(owner, arg.target)) if isinstance(arg, Node) else float(arg)), q


def _statistics(rstd: Node) -> tuple[Node, ...]:
    """rsqrt(mean((y - mean(y))^2) + t) back to (y, mean(y), y - mean(y), its square, the
    variance, var + t, t)."""
    var_eps = _producer(rstd.args[0])
    var = _producer(var_eps.args[0])
    square = _producer(var.args[0])
    centered = _producer(square.args[0])
    mean = _producer(centered.args[1])
    y = _producer(centered.args[0])
    assert is_op(var_eps, aten.add.Tensor) and is_op(var, aten.mean.dim), var_eps
    assert is_op(square, aten.mul.Tensor) and is_op(centered, aten.sub.Tensor), square
    assert is_op(mean, aten.mean.dim) and _producer(mean.args[0]) is y, mean
    return y, mean, centered, square, var, var_eps, var_eps.args[1]


def find_norms(graph: Graph, owner: nn.Module) -> list[_Norm]:
    """Each InstanceNorm, from its rsqrt back: rsqrt(mean((x - mean(x))^2) + eps); with its
    second pass, rsqrt(mean((y - mean(y))^2) + eps x rstd^2) for y = (x - mean(x)) x rstd."""
    norms, seconds = [], {}
    for rsqrt in graph.nodes:
        if not is_op(rsqrt, aten.rsqrt.default):
            continue
        x, mean, centered, square, var, var_eps, eps_arg = _statistics(rsqrt)
        eps_rstd = _producer(eps_arg)
        if is_op(eps_rstd, aten.mul.Tensor):  # a second pass: eps x (rstd x rstd)
            rstd_square = _producer(eps_rstd.args[0])
            first = _producer(rstd_square.args[0])
            assert is_op(rstd_square, aten.mul.Tensor) and is_op(first, aten.rsqrt.default), eps_rstd
            assert is_op(x, aten.mul.Tensor) and _producer(x.args[1]) is first, x
            parts = (x, mean, centered, square, var, rstd_square, eps_rstd, var_eps, rsqrt)
            seconds[first] = _SecondPass(*parts, _constant(eps_rstd.args[1], owner)[1])
            continue
        eps, eps_q = _constant(eps_arg, owner)
        norms.append(_Norm(x, mean, centered, square, var, var_eps, rsqrt, eps, eps_q))
    for norm in norms:
        norm.second = seconds.pop(norm.rstd, None)
    assert not seconds, seconds
    return norms


def read_from(graph: Graph, statistic: Node, source: Node) -> None:
    """What read the statistic `statistic` reads `source` instead: re-quantized at the same scale
    in a quantized graph, so its readers see the same int8 values."""
    value = value_of(statistic)
    if value is statistic:
        statistic.replace_all_uses_with(source)
        return
    with graph.inserting_after(value):
        q = graph.call_function(_op(QUANTIZE), (source, *value.args[1:]))
    value.replace_all_uses_with(q)


def split(module: GraphModule, config: ModelConfig | None = None) -> Stages:
    """Cut an exported (static-shape) network graph into stages at its norm statistics.

    `module` takes one (1, 3, H, W) image and returns the enhanced image: a torch.export of
    EnhanceNet, or its quantized reference model. The stages it returns take and return
    named NCHW tensors: stage 0 takes the image; stage k (1..5) also takes ``mean{k}`` and
    ``rstd{k}`` (1, C, 1, 1), and with a second pass ``mean_second{k}`` and ``rstd_second{k}``;
    the last returns ``enhanced``. With the network's `config`, the meta records the `halo` its
    windows need (without, the runtime assumes its default).
    """
    gm = copy.deepcopy(module)
    graph = gm.graph
    for node in list(graph.nodes):  # shape guards of torch.export: not part of the function
        if node.op == "call_module" and node.target == "_guards_fn":
            graph.erase_node(node)
    (image,) = [n for n in graph.nodes if n.op == "placeholder"]
    (out_node,) = [n for n in graph.nodes if n.op == "output"]
    norms = find_norms(graph, gm)
    chains = [n.chain() for n in norms]  # before the reductions are cut away

    # The statistics become inputs: what read mean / rstd reads a placeholder; the reductions die.
    stat_inputs: dict[Node, int] = {}
    last = next(iter(graph.nodes))
    for k, norm in enumerate(norms, 1):
        for stat, node in norm.statistics().items():
            name = f"{stat}{k}"
            with graph.inserting_after(last):
                placeholder = graph.placeholder(name)
            last = placeholder
            placeholder.meta["val"] = node.meta["val"]
            stat_inputs[placeholder] = k
            read_from(graph, node, placeholder)
    graph.eliminate_dead_code()

    # Each op's stage: the highest norm whose statistics it depends on.
    stage_of: dict[Node, int] = {}
    for node in graph.nodes:
        if node.op == "placeholder":
            stage_of[node] = stat_inputs.get(node, 0)
        elif node.op == "get_attr":
            stage_of[node] = -1  # constants go wherever they are used
        elif node.op != "output":
            deps = [stage_of[a] for a in node.all_input_nodes]
            stage_of[node] = max(deps, default=0)
    n_stages = len(norms) + 1

    # Crossings: ops of one stage read by a later one. A quantized crossing is its quantize
    # node (an int8 map); readers get a fresh dequantize of it in their own stage.
    crossing_names: dict[Node, str] = {}
    buffers: dict[str, dict] = {}
    height = image.meta["val"].shape[-2]

    def crossing(node: Node) -> Node:
        return node.args[0] if is_op(node, DEQUANTIZE) else node

    for node in graph.nodes:
        if node.op == "output":
            continue
        for arg in node.all_input_nodes:
            if arg.op in ("placeholder", "get_attr") or stage_of[arg] in (-1, stage_of.get(node)):
                continue
            src = crossing(arg)
            if src not in crossing_names:
                name = f"map{len(crossing_names)}"
                crossing_names[src] = name
                shape = src.meta["val"].shape if "val" in src.meta else _producer(src).meta["val"].shape
                buffers[name] = {
                    "stage": stage_of[src],
                    "scale": height // shape[-2],
                    "channels": int(shape[1]),
                    "q": [float(src.args[1]), int(src.args[2])] if is_op(src, QUANTIZE) else None,
                }
    norm_inputs = [crossing_names[value_of(n.input)] for n in norms]

    graphs, stage_meta = [], []
    result = out_node.args[0]
    if isinstance(result, tuple | list):
        (result,) = result
    for s in range(n_stages):
        new = Graph()
        env: dict[Node, Node] = {}
        inputs: list[str] = []

        def read(arg: Node, s: int = s, new: Graph = new, env: dict = env, inputs: list = inputs) -> Node:
            if arg in env:
                return env[arg]
            if stage_of[arg] == -1:  # a constant, or an op on constants (a weight's view)
                env[arg] = (
                    new.get_attr(arg.target)
                    if arg.op == "get_attr"
                    else new.node_copy(arg, lambda a: read(a))
                )
                return env[arg]
            src = crossing(arg) if arg.op != "placeholder" else arg
            if arg.op == "placeholder" or stage_of[src] < s:
                name = IMAGE if arg is image else arg.name if arg.op == "placeholder" else crossing_names[src]
                if src not in env:
                    env[src] = new.placeholder(name)
                    inputs.append(name)
                value = env[src]
                if is_op(src, QUANTIZE):  # re-read the int8 map at its scale
                    value = new.call_function(_op(QUANTIZE), (value, *src.args[1:]))
                if is_op(arg, DEQUANTIZE):
                    value = new.call_function(_op(DEQUANTIZE), (value, *arg.args[1:]))
                env[arg] = value
                return value
            raise AssertionError(f"{arg.name} is computed in a later stage")

        for node in graph.nodes:
            if node.op in ("placeholder", "get_attr", "output") or stage_of[node] != s:
                continue
            for arg in node.all_input_nodes:
                read(arg)
            env[node] = new.node_copy(node, lambda a, env=env: env[a])
        outputs = {name: src for src, name in crossing_names.items() if stage_of[src] == s}
        out_values = {}
        for name, src in outputs.items():  # a map leaves quantized: dequantize the int8 map
            node = env[src]
            out_values[name] = (
                new.call_function(_op(DEQUANTIZE), (node, *src.args[1:])) if is_op(src, QUANTIZE) else node
            )
        if s == n_stages - 1:
            out_values[OUTPUT] = read(result)
        new.output(out_values)
        graphs.append(GraphModule(gm, new))
        stage_meta.append({"inputs": inputs, "outputs": list(out_values)})

    meta = {
        "stages": stage_meta,
        "maps": buffers,
        "norms": [
            {
                "input": name,
                "channels": int(n.mean.meta["val"].shape[1]),
                "eps": n.eps,
                "passes": 1 if n.second is None else 2,
                "chain": chain,
            }
            for name, n, chain in zip(norm_inputs, norms, chains, strict=True)
        ],
    }
    if config is not None:
        meta["halo"] = halo(config)
    return Stages(graphs, meta)


def sample_inputs(meta: dict, stage: int, size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """NCHW sample inputs of stage `stage` in windows of `size` (what an exporter traces with):
    the image in [0, 1], maps at their scales, statistics around 1 (rstd must be positive)."""
    h, w = size
    samples = {}
    for name in meta["stages"][stage]["inputs"]:
        if name == IMAGE:
            samples[name] = torch.rand(1, 3, h, w)
        elif name in meta["maps"]:
            s = meta["maps"][name]["scale"]
            samples[name] = torch.rand(1, meta["maps"][name]["channels"], h // s, w // s)
        else:  # a statistic of norm k: mean{k}, rstd{k}, mean_second{k}, rstd_second{k}
            channels = meta["norms"][int(name.lstrip(string.ascii_letters + "_")) - 1]["channels"]
            samples[name] = torch.rand(1, channels, 1, 1) + 0.5
    return samples


def run_stage(graph: GraphModule, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One stage on NCHW tensors, by name."""
    names = [n.target for n in graph.graph.nodes if n.op == "placeholder"]
    with torch.no_grad():
        return graph(*(inputs[name] for name in names))


def static_graph(net: nn.Module, size: tuple[int, int]) -> GraphModule:
    """The graph `split` takes, at one (H, W): a torch.export of an FP32 EnhanceNet, or the
    quantized reference model of a prepared QAT/PTQ graph (`qaie.quant.quantize`)."""
    example = torch.rand(1, 3, *size)
    if isinstance(net, GraphModule):
        from qaie.quant import quantize

        return quantize.convert(quantize.reprepare(net, example, dynamic=False))
    return torch.export.export(copy.deepcopy(net).eval(), (example,), strict=False).module()


_PROBE = 256  # a probe size well beyond twice any stage's reach


@functools.cache
def halo(config: ModelConfig) -> int:
    """The pixels, on the ALIGN grid, that a window needs between its inner edge and the pixels
    it owns for every stage to compute them exactly: how far any stage output reaches into
    its inputs across a cut on the grid, probed on an FP32 network of `config` (the reach is
    the architecture's: the quantized and phase forms compute the same local function).

    An output that no input beyond the cut reaches cannot see the zeros a window pads there
    either: each layer's positions beyond the cut depend on inputs beyond it.
    """
    from qaie.nn.model import EnhanceNet

    torch.manual_seed(0)
    stages = split(static_graph(EnhanceNet(config), (_PROBE, _PROBE)))
    cut, reach = _PROBE // 2, 0
    for k, graph in enumerate(stages.graphs):
        inputs = sample_inputs(stages.meta, k, (_PROBE, _PROBE))
        base = run_stage(graph, inputs)
        for axis, before in itertools.product((2, 3), (True, False)):
            changed = {name: t.clone() for name, t in inputs.items()}
            for t in changed.values():
                if t.shape[axis] > 1:  # a map or the image, not a statistic
                    at = cut * t.shape[axis] // _PROBE
                    side = t.narrow(axis, 0, at) if before else t.narrow(axis, at, t.shape[axis] - at)
                    side += torch.rand_like(side)
            for name, value in run_stage(graph, changed).items():
                s = _PROBE // value.shape[axis]
                moved = (value != base[name]).movedim(axis, 0).flatten(1).any(dim=1).nonzero().flatten()
                if len(moved):
                    far = (int(moved.max()) + 1) * s - cut if before else cut - int(moved.min()) * s
                    reach = max(reach, far)
    return -(-reach // ALIGN) * ALIGN
