"""Integer-only INT8 quantization of EnhanceNet with torchao PT2E: one quantizer for PTQ and QAT.

The rules live in ``RULES`` (aten op -> small annotator); every op of the network gets a
quantized output, so the LiteRT converter lowers the whole graph to int8 kernels:

- conv weights: per-channel symmetric int8 in [-127, 127], scale amax / 127 (what TFLite
  stores); the bias becomes int32 at input scale * weight scale (the converter does it;
  `convert` rounds the reference model's bias to the same grid);
- activations: per-tensor asymmetric int8, min/max ranges (QAT: moving averages; PTQ:
  all-image min/max for the norms' statistics, a histogram search for the rest:
  `QuantSpecs.build`, `calibrate`), torch's default eps
  (float32 eps as the smallest scale, not 2^-12);
- network input and output: fixed scale 1/255, zero point -128 (uint8 pixels map exactly);
  the op before the final clamp(0, 1) already writes at that scale, which *is* the clamp;
- max-pool, nearest resize, LeakyReLU, concatenation: output shares the input scale (all
  inputs of a concatenation share one scale: TFLite's int8 CONCATENATION requires it);
- tanh: the fixed scale 1/128, zero point 0 that TFLite's int8 TANH requires. Its outputs
  (a, b) meet only each other (the gate a*b, the a|b skip concatenation) and convolutions:
  the decoder reads the skip through its own 1x1 conv (see qaie.nn.model.FusionDecoder), so no
  concatenation mixes the 1/128 skip with decoder features and nothing is requantized;
- LeakyReLU shares its input scale (with its own output scale XNNPACK
  rounds about 13% of its outputs differently), and its slope becomes the 8-bit fixed-point
  value XNNPACK multiplies by (0.2 -> 51/256): then both halves are exact;
- rsqrt(var + eps): in QAT a var + eps that rounds to 0 makes rsqrt saturate at the top of
  its range, as TFLite's RSQRT does (`RsqrtInputFakeQuantize`), without an inf;
- a norm's second pass (`qaie.nn.model.SecondPass`): its statistics are 0 and 1 in float, so
  no observer could find their ranges; they get fixed ones around those values
  (`SECOND_PASS_RANGES`).

PTQ uses observers, QAT plain ``FakeQuantize`` (never the fused variant: it computes weight
scales as amax/127.5 while the converter uses amax/127). Both graphs have the same observer
layout, so a state dict moves between them and between input sizes.

Imports are pinned to ``torchao.quantization.pt2e`` (torchao 0.18), not torch.ao (deprecated).
"""

from __future__ import annotations

import copy
import dataclasses
import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from torch.export import Dim
from torch.fx import GraphModule, Node
from torchao.quantization.pt2e import (
    FakeQuantize,
    FakeQuantizeBase,
    disable_observer,
    enable_observer,
)
from torchao.quantization.pt2e.observer import (
    FixedQParamsObserver,
    HistogramObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    PerChannelMinMaxObserver,
)
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e, prepare_qat_pt2e
from torchao.quantization.pt2e.quantizer import (
    FixedQParamsQuantizationSpec,
    QuantizationAnnotation,
    QuantizationSpec,
    QuantizationSpecBase,
    Quantizer,
    SharedQuantizationSpec,
)
from torchao.quantization.pt2e.utils import getattr_from_fqn

from qaie.config import ModelConfig
from qaie.nn.model import EnhanceNet
from qaie.progress import progress
from qaie.quant import phases as phase_form
from qaie.quant.fxgraph import is_op

QuantMode = Literal["qat", "ptq"]
aten = torch.ops.aten
_qd = torch.ops.quantized_decomposed

# Fixed quantization of the network's input and output: q = round(255 * x) - 128, x in [0, 1].
IO_SCALE = 1.0 / 255.0
IO_ZERO_POINT = -128
# TFLite's int8 TANH output: q = round(128 * y), y in [-1, 1).
TANH_SCALE = 1.0 / 128.0
TANH_ZERO_POINT = 0
# The range a tanh's input needs: its int8 output takes its end codes -128 and 127 from
# x <= -atanh(127.5 / 128) = -3.12 and x >= atanh(126.5 / 128) = 2.57, so wider values give the
# codes they would give clipped here (with a margin). PTQ's histogram search, which sees only the
# input's own error, set ranges up to [-7.3, 12.5] on the official weights: 2-3x coarser steps
# for nothing.
TANH_INPUT_RANGE = (-3.2, 2.7)
PTQ_AVERAGING = 0.1  # PTQ's moving-average constant (torch's default 0.01 lets the first batch decide)
# rsqrt of it (1e6) is above any rsqrt range, since var + eps >= eps (1e-5); its gradient stays finite
SATURATING_INPUT = 1e-12
# Fixed (low, high) ranges of a second pass's statistics, whose values are k^2 and 1/k for a first
# pass whose rstd is off by k. In the first norm of the official weights on 100x100 patches
# (PTQ), k^2 was 0.66-1.38 from the 1st to the 95th percentile of channels, but 33 at the 99th
# (flat channels whose first rstd saturated; they clip here), and the means were within +-0.12
# (1st-99th). Chosen among five on the validation patches (docs/results.md, "Norms in two passes").
SECOND_PASS_RANGES = {"mean": (-0.5, 0.5), "var": (0.0, 4.0), "rstd": (0.0, 2.0)}
_META_KEY = "qaie"  # GraphModule.meta entry holding {"config": ModelConfig, "mode": QuantMode}


class RsqrtInputFakeQuantize(FakeQuantize):
    """Fake-quant for the input of rsqrt (the norm's var + eps), where a value that rounds to 0
    must not reach rsqrt as 0 (inf, then NaN gradients: 0 * inf).

    The int8 model hands rsqrt the code of 0 there, and its output saturates at the top of its
    range (TFLite's RSQRT answers with its largest output; the reference model's inf clamps).
    Once the ranges are fixed (observer off), a 0 becomes `SATURATING_INPUT`, whose rsqrt lies
    above any range rsqrt can have, so the next fake-quant clamps it to the top as deployed
    (its gradient stops there). While the observers still learn, half a step: a large but
    bounded rsqrt for the next observer to see. Half a step with fixed ranges was wrong: a
    range reaching above rsqrt(half a step) kept such channels below the top, and on the
    official weights' sky-filled validation frames the fake-quant model read 37-42 dB from
    FP32 where the int8 model gives 31-38 (docs/results.md).
    """

    def forward(self, x: Tensor) -> Tensor:
        out = super().forward(x)
        if self.fake_quant_enabled[0] == 1:
            zero = 0.5 * self.scale if self.observer_enabled[0] == 1 else SATURATING_INPUT
            out = torch.where(out > 0, out, zero)  # (B, C, 1, 1), inputs >= eps > 0
        return out


class LearnedScaleFakeQuantize(FakeQuantize):
    """Fake-quant of an ordinary activation (QAT), whose scale can be trained once its range is
    frozen (`learn_scales`): LSQ's gradient (Esser et al., 2020) through torch's learnable
    fake-quant, the zero point kept. Until then, and for every tensor not chosen, it is torch's
    FakeQuantize. A frozen range is a compromise between clipping and the step; a range learned
    on the loss makes it per tensor, where a min/max or histogram rule cannot see the error
    (docs/results.md: 2.3 dB of the official weights' INT8 error is clipping, the rest steps)."""

    learning = False

    def forward(self, x: Tensor) -> Tensor:
        if not self.learning:
            return super().forward(x)
        return torch._fake_quantize_learnable_per_tensor_affine(
            x, self.scale, self.zero_point.float(), self.quant_min, self.quant_max, 1.0
        )

    @torch.no_grad()
    def sync_range(self) -> None:
        """The observer takes the learned range, which is what `convert`, checkpoints and
        `adopt_ranges` read (calculate_qparams gives back the same scale and zero point)."""
        self.scale.clamp_(min=torch.finfo(torch.float32).eps)
        low, high = ((q - self.zero_point) * self.scale for q in (self.quant_min, self.quant_max))
        self.activation_post_process.min_val = low.reshape(()).clone()
        self.activation_post_process.max_val = high.reshape(()).clone()


@dataclass(frozen=True)
class QuantSpecs:
    """The kinds of quantization in the network, for PTQ (observers) or QAT (fake-quant)."""

    activation: QuantizationSpec
    statistic: QuantizationSpec  # the norms' means, variances and var + eps
    rsqrt_input: QuantizationSpec  # var + eps, never 0 in QAT (see RsqrtInputFakeQuantize)
    weight: QuantizationSpec
    io: FixedQParamsQuantizationSpec
    tanh: FixedQParamsQuantizationSpec
    second: dict[str, QuantizationSpecBase]  # a second pass's statistics: mean, var, var + eps, rstd

    @classmethod
    def build(cls, qat: bool) -> QuantSpecs:
        """QAT: moving-average min/max fake-quant everywhere (training moves the ranges).

        PTQ: the norms' statistics keep their min/max over all calibration images (the
        observer study, docs/results.md: a moving average lets the last images decide, and a
        photo whose variance lands above the range saturates its rsqrt); every other
        activation a moving average with constant 0.1, whose range `calibrate` then replaces by
        a histogram search over all images.
        """
        if qat:
            act_obs = LearnedScaleFakeQuantize.with_args(observer=MovingAverageMinMaxObserver)
            stat_obs = FakeQuantize.with_args(observer=MovingAverageMinMaxObserver)
            rsqrt_obs = RsqrtInputFakeQuantize.with_args(observer=MovingAverageMinMaxObserver)
            weight_obs = FakeQuantize.with_args(observer=MovingAveragePerChannelMinMaxObserver)
        else:
            act_obs = MovingAverageMinMaxObserver.with_args(averaging_constant=PTQ_AVERAGING)
            stat_obs = rsqrt_obs = MinMaxObserver
            weight_obs = PerChannelMinMaxObserver
        activation = QuantizationSpec(
            dtype=torch.int8,
            quant_min=-128,
            quant_max=127,
            qscheme=torch.per_tensor_affine,
            observer_or_fake_quant_ctr=act_obs,  # observer eps: torch's default (float32 eps)
        )
        weight = QuantizationSpec(
            dtype=torch.int8,
            quant_min=-127,
            quant_max=127,
            qscheme=torch.per_channel_symmetric,
            ch_axis=0,
            observer_or_fake_quant_ctr=weight_obs,
        )
        statistic = dataclasses.replace(activation, observer_or_fake_quant_ctr=stat_obs)
        rsqrt_input = dataclasses.replace(activation, observer_or_fake_quant_ctr=rsqrt_obs)
        io = FixedQParamsQuantizationSpec(
            dtype=torch.int8,
            scale=IO_SCALE,
            zero_point=IO_ZERO_POINT,
            quant_min=-128,
            quant_max=127,
            qscheme=torch.per_tensor_affine,
        )
        tanh = dataclasses.replace(io, scale=TANH_SCALE, zero_point=TANH_ZERO_POINT)

        def fixed(name: str) -> FixedQParamsQuantizationSpec:
            low, high = SECOND_PASS_RANGES[name]
            scale = (high - low) / 255
            return dataclasses.replace(io, scale=scale, zero_point=round(-128 - low / scale))

        var = fixed("var")
        # var + eps of the second pass: fixed, and never 0 in QAT as the first pass's
        fixed_var = FixedQParamsObserver.with_args(scale=var.scale, zero_point=var.zero_point)
        var_eps = dataclasses.replace(
            activation,
            observer_or_fake_quant_ctr=RsqrtInputFakeQuantize.with_args(observer=fixed_var)
            if qat
            else fixed_var,
        )
        second = {"mean": fixed("mean"), "var": var, "var_eps": var_eps, "rstd": fixed("rstd")}
        return cls(activation, statistic, rsqrt_input, weight, io, tanh, second)


# --- annotators: one per kind of op ---------------------------------------------------------------


def _annotation(node: Node) -> QuantizationAnnotation | None:
    return node.meta.get("quantization_annotation")


def _root_spec(node: Node) -> QuantizationSpecBase | None:
    """The spec that finally decides `node`'s output quantization (follows shared specs)."""
    ann = _annotation(node)
    spec = ann.output_qspec if ann else None
    while isinstance(spec, SharedQuantizationSpec):
        source = spec.edge_or_node
        if isinstance(source, tuple):  # an input edge (arg, user)
            ann = _annotation(source[1])
            spec = ann.input_qspec_map[source[0]]
        else:
            spec = _root_spec(source)
    return spec


def _input_spec(arg: Node, specs: QuantSpecs) -> QuantizationSpecBase:
    """How an op reads `arg`: the network input at the I/O scale, a quantized op output as it
    was quantized (no requantize), a constant (norm eps) with its own observer."""
    if arg.op == "placeholder":
        return specs.io
    if _root_spec(arg) is not None:
        return SharedQuantizationSpec(arg)
    return specs.activation


def _set(node: Node, inputs: dict[Node, QuantizationSpecBase], output: QuantizationSpecBase) -> None:
    node.meta["quantization_annotation"] = QuantizationAnnotation(
        input_qspec_map=inputs, output_qspec=output, _annotated=True
    )


def _tensor_args(node: Node) -> list[Node]:
    args = node.args[0] if node.target == aten.cat.default else node.args
    return [a for a in args if isinstance(a, Node)]


def annotate_conv(node: Node, specs: QuantSpecs) -> None:
    """Per-channel int8 weights; the bias stays float here, the converter makes it int32 (see
    `convert` for how the reference model rounds it the same way)."""
    x, weight = node.args[0], node.args[1]
    _set(node, {x: _input_spec(x, specs), weight: specs.weight}, specs.activation)


def annotate_elementwise(node: Node, specs: QuantSpecs) -> None:
    """Own observed output scale (add, sub, mul)."""
    _set(node, {a: _input_spec(a, specs) for a in _tensor_args(node)}, specs.activation)


def _in_second_pass(node: Node) -> bool:
    """Whether `node` computes a norm's second pass (`qaie.nn.model.SecondPass`)."""
    stack = node.meta.get("nn_module_stack") or {}
    return bool(stack) and str(list(stack.values())[-1][1]).endswith("SecondPass")


def annotate_statistic(node: Node, specs: QuantSpecs) -> None:
    """A norm's mean or variance (the mean over H, W): the statistic's own observer; a second
    pass's its fixed range (the variance is the mean of a square)."""
    output = specs.statistic
    if _in_second_pass(node):
        x = node.args[0]
        output = specs.second["var" if is_op(x, aten.mul.Tensor) and x.args[0] is x.args[1] else "mean"]
    _set(node, {a: _input_spec(a, specs) for a in _tensor_args(node)}, output)


def annotate_tanh(node: Node, specs: QuantSpecs) -> None:
    """TFLite's fixed tanh output quantization."""
    x = node.args[0]
    _set(node, {x: _input_spec(x, specs)}, specs.tanh)


def annotate_rsqrt(node: Node, specs: QuantSpecs) -> None:
    """rsqrt(var + eps): the op computing var + eps gets the never-zero input quantization."""
    x = node.args[0]
    assert len(x.users) == 1 and _annotation(x) is not None, f"{x.name}: rsqrt input must be an op"
    second = _in_second_pass(node)
    _annotation(x).output_qspec = specs.second["var_eps"] if second else specs.rsqrt_input
    _set(node, {x: SharedQuantizationSpec(x)}, specs.second["rstd"] if second else specs.activation)


def annotate_passthrough(node: Node, specs: QuantSpecs) -> None:
    """Max-pool, nearest resize, LeakyReLU: output shares the input's quantization."""
    x = node.args[0]
    _set(node, {x: _input_spec(x, specs)}, SharedQuantizationSpec(x))


def annotate_cat(node: Node, specs: QuantSpecs) -> None:
    """All inputs and the output share the first input's quantization. (An input quantized
    differently, e.g. at a fixed scale, would get its own edge observer: a requantize.)"""
    first, *rest = _tensor_args(node)
    shared = SharedQuantizationSpec((first, node))
    _set(node, {first: _input_spec(first, specs), **dict.fromkeys(rest, shared)}, shared)


def annotate_output_clamp(node: Node, specs: QuantSpecs) -> None:
    """clamp(y, 0, 1) at the end: y itself is quantized at the output's fixed 1/255 scale, which
    is the clamp (int8 [-128, 127] is exactly [0, 1]), so no precision is lost before it."""
    y = node.args[0]
    assert len(y.users) == 1 and _annotation(y) is not None, f"{y.name}: output clamp input must be an op"
    _annotation(y).output_qspec = specs.io
    _set(node, {y: SharedQuantizationSpec(y)}, specs.io)


Annotator = Callable[[Node, QuantSpecs], None]

# The rules: every compute op of EnhanceNet (torch.export training IR) and how it is quantized.
RULES: dict[Callable, Annotator] = {
    aten.conv2d.default: annotate_conv,
    aten.tanh.default: annotate_tanh,
    aten.mul.Tensor: annotate_elementwise,
    aten.add.Tensor: annotate_elementwise,
    aten.sub.Tensor: annotate_elementwise,
    aten.mean.dim: annotate_statistic,
    aten.rsqrt.default: annotate_rsqrt,
    aten.leaky_relu.default: annotate_passthrough,
    aten.max_pool2d.default: annotate_passthrough,
    aten.upsample_nearest2d.vec: annotate_passthrough,
    aten.cat.default: annotate_cat,
    aten.clamp.default: annotate_output_clamp,
}
# Ops that only reshape constants (e.g. a parameter's view) need no rule.
_CONSTANT_OPS = {aten.view.default, operator.getitem}


class QaieQuantizer(Quantizer):
    """Quantizes every op of EnhanceNet for an integer-only TFLite model (rules in ``RULES``)."""

    def __init__(self, qat: bool) -> None:
        super().__init__()
        self.specs = QuantSpecs.build(qat)

    def transform_for_annotation(self, model: GraphModule) -> GraphModule:
        """Python scalars in add/sub/mul (the norm's eps) become tensor constants so they can
        be quantized like any other input; LeakyReLU slopes become what XNNPACK computes.

        XNNPACK's int8 LeakyReLU multiplies by the slope in 8-bit fixed point (0.2 becomes
        51/256) and rounds half up. With the slope 51/256 in the graph its results are the
        simulation's, but for the one tie (an input 128 steps below the zero point, -25.5
        steps out) that torch rounds to even: a slope 2^-20 smaller rounds it up too, and
        still becomes 51/256 in XNNPACK.
        """
        for node in list(model.graph.nodes):
            if node.op == "call_function" and node.target == aten.leaky_relu.default:
                x, slope = node.args
                node.args = (x, round(slope * 256) / 256 - 2**-20)
            if node.op != "call_function" or node.target not in (
                aten.add.Tensor,
                aten.sub.Tensor,
                aten.mul.Tensor,
            ):
                continue
            args = list(node.args)
            for i, arg in enumerate(args):
                if isinstance(arg, int | float):
                    name = f"_qaie_scalar_{node.name}_{i}"
                    model.register_buffer(name, torch.tensor(float(arg)))
                    with model.graph.inserting_before(node):
                        args[i] = model.graph.get_attr(name)
            node.args = tuple(args)
        model.recompile()
        return model

    def annotate(self, model: GraphModule) -> GraphModule:
        for node in model.graph.nodes:
            if node.op == "call_function" and node.target in RULES:
                RULES[node.target](node, self.specs)
        return model

    def validate(self, model: GraphModule) -> None:
        for node in model.graph.nodes:
            if node.op != "call_function" or node.target in _CONSTANT_OPS:
                continue
            if not isinstance(node.meta.get("val"), torch.Tensor):  # symbolic sizes, asserts
                continue
            if _annotation(node) is None:
                raise NotImplementedError(
                    f"no quantization rule for {node.target} ({node.name}); add one to qaie.quant.quantize.RULES"
                )


# --- preparing, calibrating, converting -----------------------------------------------------------

# Smallest H, W a prepared graph accepts: below 13 the S/8 maps shrink to 1 pixel and
# torch.export specializes the graph.
MIN_TRACED_SIDE = 16
_MAX_TRACED_SIDE = 1 << 14


def _export(model: EnhanceNet, example: Tensor, dynamic: bool, train: bool) -> GraphModule:
    """torch.export training IR of a copy of `model` (the exported graph would otherwise share
    the caller's parameters, and QAT would train them in place); with `dynamic`, batch, H and
    W are symbolic so one prepared graph takes training crops and whole images alike."""
    model = copy.deepcopy(model).train(train)
    shapes = None
    if dynamic:
        batch = Dim("batch", min=1, max=_MAX_TRACED_SIDE)
        height, width = (
            Dim("height", min=MIN_TRACED_SIDE, max=_MAX_TRACED_SIDE),
            Dim("width", min=MIN_TRACED_SIDE, max=_MAX_TRACED_SIDE),
        )
        shapes = ({0: batch, 2: height, 3: width},)
        # torch.export specializes dims of size 1 and sizes below the minimum: trace a (2, 3, h, w)
        h, w = (max(d, MIN_TRACED_SIDE) for d in example.shape[-2:])
        example = example.new_zeros(2, example.shape[1], h, w)
    return torch.export.export(model, (example,), dynamic_shapes=shapes, strict=False).module()


def prepare_qat(model: EnhanceNet, example: Tensor, dynamic: bool = True) -> GraphModule:
    """Fake-quantized training graph (straight-through estimator) of `model`.

    Args:
        model: the FP32 network (its current weights are the starting point).
        example: a (B, 3, H, W) input; with `dynamic` only its rank and dtype matter.
        dynamic: accept any batch and H, W >= MIN_TRACED_SIDE (False: only `example`'s shape).
    """
    prepared = prepare_qat_pt2e(_export(model, example, dynamic, train=True), QaieQuantizer(qat=True))
    return _tag(prepared, model.config, "qat")


def prepare_ptq(model: EnhanceNet, example: Tensor, dynamic: bool = True) -> GraphModule:
    """Observed graph of `model` for PTQ calibration (same rules and layout as `prepare_qat`)."""
    prepared = prepare_pt2e(_export(model, example, dynamic, train=False), QaieQuantizer(qat=False))
    return _tag(prepared, model.config, "ptq")


def _tag(prepared: GraphModule, config: ModelConfig, mode: QuantMode) -> GraphModule:
    prepared.meta[_META_KEY] = {"config": config, "mode": mode}
    return prepared


def graph_info(prepared: GraphModule) -> tuple[ModelConfig, QuantMode]:
    """The ModelConfig and mode ("qat" | "ptq") a graph was prepared from."""
    info = prepared.meta.get(_META_KEY)
    assert info is not None, "not a graph from qaie.quant.quantize.prepare_qat/prepare_ptq"
    return info["config"], info["mode"]


def reprepare(prepared: GraphModule, example: Tensor, dynamic: bool = True) -> GraphModule:
    """The same quantized model prepared anew for `example`'s shape.

    Weights, observer min/max and fake-quant scales do not depend on the input size, so a
    fresh graph of the same config loads the state dict exactly; this is also how a QAT/PTQ
    checkpoint reloads (rebuild EnhanceNet(config), prepare, load_state_dict).
    """
    config, mode = graph_info(prepared)
    prepare = prepare_qat if mode == "qat" else prepare_ptq
    fresh = prepare(EnhanceNet(config), example, dynamic)
    fresh.load_state_dict(prepared.state_dict())
    return fresh


def calibrate(prepared: GraphModule, batches: Iterable[Tensor]) -> None:
    """Run (B, 3, H, W) batches in [0, 1] through `prepared` with observers on, no gradients.

    In a PTQ graph each ordinary activation's range is then the one a histogram of all the
    batches says quantizes it with the least squared error (`_RangeSearch`); the graph's own
    observers keep that range as their min/max, so the checkpoint layout does not change. One
    call sees all the calibration images: ranges of earlier calls are replaced.
    """
    prepared.apply(enable_observer)
    searches: dict[int, _RangeSearch] = {}  # a shared observer is one module under several names
    targets = {n.target for n in prepared.graph.nodes if n.op == "call_module"}
    names = [name for name in targets if type(getattr(prepared, name)) is MovingAverageMinMaxObserver]
    for name in names:  # PTQ's ordinary activations
        module = getattr(prepared, name)
        if id(module) not in searches:
            searches[id(module)] = _RangeSearch(module)
        setattr(prepared, name, searches[id(module)])
    try:
        with torch.no_grad():
            for batch in progress(batches, desc="calibrate", unit="batch", leave=False):
                prepared(batch)
    finally:
        for search in searches.values():
            search.finish()
        for name in names:
            setattr(prepared, name, getattr(prepared, name).observer)
    limit_tanh_inputs(prepared)


def limit_tanh_inputs(prepared: GraphModule) -> None:
    """Cut the range of each tensor that a tanh reads to `TANH_INPUT_RANGE` (never widen it):
    the deployed tanh gives the same codes, on a finer input grid. In a fake-quant graph the
    fake-quant takes the new range at once."""
    low, high = TANH_INPUT_RANGE
    watchers = _watchers(prepared)
    for node in prepared.graph.nodes:
        if not is_op(node, aten.tanh.default):
            continue
        module = watchers[_source(node.args[0]).name]
        observer = getattr(module, "activation_post_process", module)
        observer.min_val = observer.min_val.clamp(min=low, max=0.0)
        observer.max_val = observer.max_val.clamp(min=0.0, max=high)
        if observer is not module:
            _take_observer_range(module)


class _RangeSearch(torch.nn.Module):
    """Stands in for a PTQ activation observer during `calibrate`: it feeds the observer and a
    HistogramObserver, whose range minimizes the L2 quantization error over every image seen.

    On the official weights' 1920x1080 frames that is 39.62 dB of fidelity to FP32 against
    37.70 for the moving average it replaces (docs/results.md): the moving average follows the
    last frames, so a frame with wider values than those clips, and min/max over all frames
    gives everything a coarse step.
    """

    def __init__(self, observer: MovingAverageMinMaxObserver) -> None:
        super().__init__()
        self.observer = observer
        self.histogram = HistogramObserver(
            dtype=observer.dtype,
            qscheme=observer.qscheme,
            quant_min=observer.quant_min,
            quant_max=observer.quant_max,
            eps=observer.eps.item(),
        )

    def forward(self, x: Tensor) -> Tensor:
        self.histogram(x)
        return self.observer(x)

    def finish(self) -> None:
        """The observer takes the searched range as its min/max (keeps its own where the
        histogram has no spread: a constant tensor, or none seen)."""
        if bool(self.histogram.max_val > self.histogram.min_val):
            scale, zero_point = self.histogram.calculate_qparams()
            # the range whose min/max give back this scale (to its last bit) and zero point
            self.observer.min_val = ((self.observer.quant_min - zero_point) * scale).reshape(())
            self.observer.max_val = ((self.observer.quant_max - zero_point) * scale).reshape(())


def freeze_observers(prepared: GraphModule) -> None:
    """Stop updating scales (QAT after N steps, and before evaluating): fake-quant keeps
    using the current scale/zero point. No effect on PTQ observers (they only observe)."""
    prepared.apply(disable_observer)


def learn_scales(prepared: GraphModule) -> list[Tensor]:
    """Start training the scale of every ordinary activation of a QAT graph whose ranges are
    frozen; returns the scales, for the optimizer. Not the norms' statistics chain (x - mean,
    its square, rsqrt; the means and var + eps have their own fake-quants), nor a tanh's input
    (`limit_tanh_inputs`), and the fixed grids of the image, the output and tanh stay fixed.
    After each optimizer step `sync_learned_ranges`."""
    fixed = set()  # each norm's rsqrt, x - mean and its square, from rsqrt back; tanh inputs
    for node in prepared.graph.nodes:
        if is_op(node, aten.rsqrt.default):
            var = _source(_source(node.args[0]).args[0])
            square = _source(var.args[0])
            fixed |= {node.name, square.name, _source(square.args[0]).name}
        if is_op(node, aten.tanh.default):
            fixed.add(_source(node.args[0]).name)
    learned = {}
    for name, module in _watchers(prepared).items():
        if isinstance(module, LearnedScaleFakeQuantize) and name not in fixed:
            assert module.observer_enabled[0] == 0, "learn_scales needs frozen ranges"
            learned[id(module)] = module
    for module in learned.values():
        module.learning = True
        module.scale.requires_grad_(True)
    return [m.scale for m in learned.values()]


def sync_learned_ranges(prepared: GraphModule) -> None:
    """Every learned scale's range into its observer (see LearnedScaleFakeQuantize.sync_range)."""
    for module in prepared.modules():
        if isinstance(module, LearnedScaleFakeQuantize) and module.learning:
            module.sync_range()


def _source(node: Node) -> Node:
    """The op behind `node`, through the fake-quant modules of a prepared graph."""
    while node.op == "call_module" and node.target.startswith("activation_post_process"):
        node = node.args[0]
    return node


def adopt_ranges(fake_quant: GraphModule, observed: GraphModule) -> None:
    """Give each fake-quant of a QAT graph the range PTQ's observer of the same tensor saw, or
    the range of the same fake-quant of another QAT graph (both prepared from one network: their
    watchers watch nodes of the same names).

    QAT then starts from PTQ's ranges (the observer study's policy) instead of its own moving
    averages, or continues a QAT run's; with the observers frozen it keeps them.
    """
    ours, theirs = _watchers(fake_quant), _watchers(observed)
    assert ours.keys() == theirs.keys(), "graphs of different networks"
    for node, fq in ours.items():
        # a fixed grid (I/O, tanh, a second pass's statistics) is the quantizer's, not observed;
        # a fake-quant over a fixed observer still takes it from there (its own starts at 1, 0)
        if not isinstance(fq.activation_post_process, FixedQParamsObserver):
            # QAT's, or PTQ's observer
            source = getattr(theirs[node], "activation_post_process", theirs[node])
            fq.activation_post_process.min_val = source.min_val.clone()
            fq.activation_post_process.max_val = source.max_val.clone()
        _take_observer_range(fq)


def _take_observer_range(fq: FakeQuantizeBase) -> None:
    """The fake-quant computes with its observer's range from now on (with the observer off,
    its scale and zero point would otherwise keep their last values)."""
    scale, zero_point = fq.activation_post_process.calculate_qparams()
    fq.scale.resize_(scale.shape).copy_(scale)
    fq.zero_point.resize_(zero_point.shape).copy_(zero_point)


def _watchers(graph: GraphModule) -> dict[str, torch.nn.Module]:
    """Observed node name -> the observer or fake-quant module watching it (each tensor has one
    module; later calls of a shared one are skipped)."""
    modules = dict(graph.named_modules())
    watched = {}
    for node in graph.graph.nodes:
        if (
            node.op == "call_module"
            and node.target in modules
            and node.target.startswith("activation_post_process")
        ):
            watched.setdefault(node.args[0].name, modules[node.target])
    return watched


def convert(prepared: GraphModule, phases: bool = False) -> GraphModule:
    """The quantized reference model: int8 quantize/dequantize around every op, computed in
    float by PyTorch. This is what litert-torch converts, and what the fake-quant model
    simulates. `prepared` is left untouched. With `phases`, each exact 2x upsample + conv3x3
    of a static graph is computed in phase form (`qaie.quant.phases`: 4/9 of its
    multiply-adds, the phase kernels quantized anew).

    Conv biases are rounded to the int32 grid (input scale * weight scale) the converter puts
    them on, so the reference computes what the integer kernels compute (the converter
    re-quantizes the rounded values to the same integers).
    """
    converted = convert_pt2e(copy.deepcopy(prepared), fold_quantize=False)
    if phases:
        phase_form.rewrite(converted)
    with torch.no_grad():
        for node in converted.graph.nodes:
            if node.op == "call_function" and node.target == aten.conv2d.default and len(node.args) > 2:
                _round_bias(converted, node)
    return converted


def for_inference(module: torch.nn.Module) -> torch.nn.Module:
    """`module.eval()` for modules holding exported graphs, whose eval() torchao forbids. The
    network has no train-only op (no dropout, no batch norm), so only the flag changes, which
    converters read (and warn about when it says training)."""
    for m in module.modules():
        m.training = False
    return module


def _round_bias(converted: GraphModule, conv: Node) -> None:
    dq_x, dq_w, bias = conv.args[:3]
    assert dq_x.target == _qd.dequantize_per_tensor.default, dq_x.target
    assert dq_w.target == _qd.dequantize_per_channel.default, dq_w.target
    assert bias.op == "get_attr", bias.op
    x_scale = float(dq_x.args[1])
    w_scale = getattr_from_fqn(converted, dq_w.args[1].target)  # (C_out,)
    b = getattr_from_fqn(converted, bias.target)
    step = (x_scale * w_scale.double()).to(b.device)
    b.copy_((torch.round(b.double() / step) * step).to(b.dtype))
