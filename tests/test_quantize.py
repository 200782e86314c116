"""The quantizer: every op quantized, the scales TFLite needs, one layout for PTQ and QAT at any
input size, and a quantized reference that the fake-quant model agrees with."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.fx import GraphModule
from torchao.quantization.pt2e import FakeQuantize

from qaie.config import ModelConfig
from qaie.experiment.parity import compare
from qaie.nn.model import EnhanceNet
from qaie.quant import calibrate, quantize

aten = torch.ops.aten
qd = torch.ops.quantized_decomposed


def _quantizers_after(graph: GraphModule, node) -> list[torch.nn.Module]:
    """The fake-quant modules reading `node`'s output."""
    modules = (graph.get_submodule(u.target) for u in node.users if u.op == "call_module")
    return [m for m in modules if isinstance(m, FakeQuantize)]


def _output_quantizer(graph: GraphModule, node_name: str) -> torch.nn.Module:
    """The one fake-quant module that reads `node_name`'s output."""
    node = next(n for n in graph.graph.nodes if n.name == node_name)
    (module,) = {id(m): m for m in _quantizers_after(graph, node)}.values()
    return module


def _nodes(graph: GraphModule, target) -> list:
    return [n for n in graph.graph.nodes if n.op == "call_function" and n.target == target]


@pytest.fixture(scope="module")
def qat_graph() -> GraphModule:
    torch.manual_seed(0)
    graph = quantize.prepare_qat(EnhanceNet(ModelConfig(width=4)), torch.rand(2, 3, 32, 32))
    graph(torch.rand(2, 3, 32, 32))  # observers see data once
    return graph


def test_every_op_is_quantized_in_the_reference(qat_graph: GraphModule) -> None:
    """Each compute op reads dequantized int8 values and its output is quantized again:
    nothing is left for the converter to run in float."""
    ref = quantize.convert(qat_graph)
    aten_ops = [
        n for n in ref.graph.nodes if n.op == "call_function" and getattr(n.target, "namespace", "") == "aten"
    ]
    compute = [n for n in aten_ops if n.target in quantize.RULES]
    assert {n.target for n in compute} == set(quantize.RULES)
    # what is left only reshapes a constant (a norm weight's view) or reads a symbolic size
    assert {n.target for n in aten_ops} - set(quantize.RULES) <= {aten.view.default, aten.sym_size.int}
    for node in compute:
        assert {u.target for u in node.users} == {qd.quantize_per_tensor.default}, node.name
        for arg in node.all_input_nodes:
            if arg.op == "call_function" and isinstance(arg.meta.get("val"), torch.Tensor):
                assert arg.target in (qd.dequantize_per_tensor.default, qd.dequantize_per_channel.default), (
                    f"{node.name} reads {arg.name}"
                )


def test_fixed_and_shared_scales(qat_graph: GraphModule) -> None:
    out = next(n for n in qat_graph.graph.nodes if n.op == "output").args[0][0]
    x = next(n for n in qat_graph.graph.nodes if n.op == "placeholder")
    io = [*_quantizers_after(qat_graph, x), qat_graph.get_submodule(out.target)]
    for module in io:
        assert math.isclose(float(module.scale), 1 / 255, rel_tol=1e-6)
        assert int(module.zero_point) == -128

    # tanh writes at TFLite's fixed 1/128, zero point 0 (and the a|b skip concatenation keeps it)
    tanhs = _nodes(qat_graph, aten.tanh.default)
    assert tanhs
    for node in tanhs:
        module = _output_quantizer(qat_graph, node.name)
        assert float(module.scale) == 1 / 128 and int(module.zero_point) == 0, node.name

    # pool, resize, LeakyReLU and concatenation outputs reuse their input's quantizer (one
    # object), so TFLite sees equal scales and needs no requantize op.
    for target in (aten.max_pool2d.default, aten.upsample_nearest2d.vec, aten.leaky_relu.default):
        for node in _nodes(qat_graph, target):
            src = node.args[0].args[0]  # the op before the input's fake-quant module
            assert _output_quantizer(qat_graph, node.name) is _output_quantizer(qat_graph, src.name)
    for node in _nodes(qat_graph, aten.cat.default):
        mine = _output_quantizer(qat_graph, node.name)
        for fq_call in node.args[0]:
            assert qat_graph.get_submodule(fq_call.target) is mine, node.name


def test_plain_fake_quantize_and_torch_eps(qat_graph: GraphModule) -> None:
    modules = [m for m in qat_graph.modules() if isinstance(m, FakeQuantize)]
    kinds = {type(m).__name__ for m in modules}
    # never fused; ordinary activations in a plain FakeQuantize whose scale can be learned
    assert kinds == {
        "FakeQuantize",
        "LearnedScaleFakeQuantize",
        "RsqrtInputFakeQuantize",
        "FixedQParamsFakeQuantize",
    }
    for m in modules:
        if type(m).__name__ != "FixedQParamsFakeQuantize":
            assert float(m.activation_post_process.eps) == torch.finfo(torch.float32).eps


def test_weight_scale_is_amax_over_127(qat_graph: GraphModule) -> None:
    conv = _nodes(qat_graph, aten.conv2d.default)[0]
    weight_fq = qat_graph.get_submodule(conv.args[1].target)
    obs = weight_fq.activation_post_process
    amax = torch.maximum(obs.min_val.abs(), obs.max_val.abs())
    torch.testing.assert_close(weight_fq.scale, amax / 127, rtol=1e-6, atol=0)
    assert torch.all(weight_fq.zero_point == 0)


def test_fake_quant_model_matches_the_quantized_reference(qat_graph: GraphModule) -> None:
    """The QAT graph (observers frozen) and the converted Q/DQ reference compute the same
    8-bit images (the reference only rounds conv biases to the int32 grid)."""
    graph = quantize.reprepare(qat_graph, torch.rand(2, 3, 32, 32))
    quantize.freeze_observers(graph)
    ref = quantize.convert(graph)
    x = torch.rand(4, 3, 40, 24)
    with torch.no_grad():
        stats = compare(graph(x).numpy(), ref(x).numpy())
    assert stats.psnr >= 50 and stats.max_abs_lsb <= 2, stats


def test_reload_at_another_size_is_exact(qat_graph: GraphModule) -> None:
    """A checkpoint is the config plus the state dict: prepared again at any size (here a
    static 24x40 graph) it loads exactly and computes the same outputs."""
    state = qat_graph.state_dict()
    static = quantize.prepare_qat(EnhanceNet(ModelConfig(width=4)), torch.rand(1, 3, 24, 40), dynamic=False)
    static.load_state_dict(state)
    for key, value in static.state_dict().items():
        assert torch.equal(value, state[key]), key
    dynamic = quantize.reprepare(qat_graph, torch.rand(2, 3, 32, 32))
    for graph in (static, dynamic):
        quantize.freeze_observers(graph)
    x = torch.rand(1, 3, 24, 40)
    with torch.no_grad():
        assert torch.equal(static(x), dynamic(x))


def test_one_dynamic_graph_takes_any_batch_and_size() -> None:
    graph = quantize.prepare_ptq(EnhanceNet(ModelConfig(width=4)), torch.rand(1, 3, 32, 32))
    for shape in [(1, 3, 16, 16), (3, 3, 33, 45), (2, 3, 100, 64)]:
        assert graph(torch.rand(shape)).shape == shape


def test_ptq_and_qat_share_one_layout(qat_graph: GraphModule) -> None:
    ptq = quantize.prepare_ptq(EnhanceNet(ModelConfig(width=4)), torch.rand(2, 3, 32, 32))
    assert sorted(_quantizer_names(ptq)) == sorted(_quantizer_names(qat_graph))


def test_ptq_keeps_the_norm_statistics_extremes() -> None:
    """PTQ's observer policy: a norm statistic's range is the min/max over every calibration
    batch (a photo with a larger variance than the first must not saturate); the rest are
    moving averages at PTQ_AVERAGING, whose ranges `calibrate` searches (the next test)."""
    from torchao.quantization.pt2e.observer import MinMaxObserver, MovingAverageMinMaxObserver

    net = EnhanceNet(ModelConfig(width=4))
    graph = quantize.prepare_ptq(net, torch.rand(1, 3, 32, 32))
    kinds = {}
    for node in graph.graph.nodes:
        if node.op == "call_module" and isinstance(getattr(graph, node.target), MinMaxObserver):
            source = node.args[0]
            statistic = source.target == torch.ops.aten.mean.dim or any(
                u.target == torch.ops.aten.rsqrt.default for u in node.users
            )
            observer = getattr(graph, node.target)
            moving = isinstance(observer, MovingAverageMinMaxObserver)
            kinds[node.target] = (statistic, moving, getattr(observer, "averaging_constant", None))
    assert {k for k in kinds.values() if k[0]} == {(True, False, None)}  # 5 norms: mean, var, var + eps
    assert sum(k[0] for k in kinds.values()) == 15
    assert {k for k in kinds.values() if not k[0]} == {(False, True, quantize.PTQ_AVERAGING)}
    # the extremes over all batches: a flat image, then a busy one, keeps the busy one's range
    flat, busy = torch.full((1, 3, 32, 32), 0.5), torch.rand(1, 3, 32, 32)
    quantize.calibrate(graph, [flat, busy])
    busy_only = quantize.prepare_ptq(net, torch.rand(1, 3, 32, 32))
    quantize.calibrate(busy_only, [busy])
    for name, (statistic, _, _) in kinds.items():
        seen, busy_range = getattr(graph, name), getattr(busy_only, name)
        covers = bool(seen.max_val >= busy_range.max_val and seen.min_val <= busy_range.min_val)
        assert covers or not statistic, name  # statistics: the union of both images' ranges


def test_ptq_searches_each_activations_range_over_all_batches() -> None:
    """Every ordinary activation's range is what a histogram search (least squared error) picks
    from all the calibration batches, kept as its observer's min/max: the layout stays."""
    from torchao.quantization.pt2e.observer import HistogramObserver, MovingAverageMinMaxObserver

    torch.manual_seed(0)
    graph = quantize.prepare_ptq(EnhanceNet(ModelConfig(width=4)), torch.rand(1, 3, 32, 32))
    layout = {k: type(m) for k, m in graph.named_children()}
    seen: dict[str, list[torch.Tensor]] = {}
    for name, module in graph.named_children():
        if type(module) is MovingAverageMinMaxObserver:
            module.register_forward_hook(
                lambda _m, args, _o, name=name: seen.setdefault(name, []).append(args[0])
            )
    quantize.calibrate(graph, [torch.rand(2, 3, 32, 32) * k for k in (0.3, 1.0, 0.6)])
    assert {k: type(m) for k, m in graph.named_children()} == layout
    tanh_inputs = {n.args[0].target for n in _nodes(graph, aten.tanh.default)}  # cut: next test
    searched = clipped = 0
    for name, inputs in seen.items():
        if name in tanh_inputs:
            continue
        histogram = HistogramObserver(dtype=torch.int8, quant_min=-128, quant_max=127)
        for x in inputs:
            histogram(x)
        if not histogram.max_val > histogram.min_val:
            continue  # a constant tensor keeps its moving average
        want_scale, want_zero_point = histogram.calculate_qparams()
        scale, zero_point = getattr(graph, name).calculate_qparams()
        assert torch.allclose(scale, want_scale, rtol=1e-6, atol=0) and torch.equal(
            zero_point, want_zero_point
        ), name
        searched += 1
        clipped += bool(255 * scale < 0.99 * (histogram.max_val - histogram.min_val))
    assert searched > 20 and clipped > 0  # some ranges clip their rare extremes


def test_tanh_inputs_keep_only_the_range_tanh_can_tell_apart() -> None:
    """Beyond `TANH_INPUT_RANGE` the int8 tanh gives its end codes, so PTQ cuts a wider range of
    a tanh's input to it (clipped values give the same codes, the rest a finer grid), and QAT
    does not learn that range back."""
    low, high = quantize.TANH_INPUT_RANGE
    ends = torch.round(torch.tanh(torch.tensor([low, high])) / quantize.TANH_SCALE).clamp(-128, 127)
    assert ends.tolist() == [-128, 127]
    torch.manual_seed(0)
    net = EnhanceNet(ModelConfig(width=4))
    with torch.no_grad():
        for encoder in (net.enc2, net.enc4):
            encoder.conv_a.weight *= 50  # inputs of tanh far beyond the range
            encoder.conv_b.weight *= 50
    graph = quantize.prepare_ptq(net, torch.rand(1, 3, 32, 32))
    quantize.calibrate(graph, [torch.rand(2, 3, 32, 32)])
    tanhs = _nodes(graph, aten.tanh.default)
    assert len(tanhs) == 4
    for node in tanhs:
        observer = graph.get_submodule(node.args[0].target)
        assert (float(observer.min_val), float(observer.max_val)) == pytest.approx((low, high))

    qat = quantize.prepare_qat(net, torch.rand(2, 3, 32, 32))
    quantize.adopt_ranges(qat, graph)
    quantize.freeze_observers(qat)
    learned = {id(s) for s in quantize.learn_scales(qat)}
    for node in _nodes(qat, aten.tanh.default):
        fake_quant = qat.get_submodule(node.args[0].target)
        assert id(fake_quant.scale) not in learned
        assert float(fake_quant.scale) == pytest.approx((high - low) / 255)


def _quantizer_names(graph: GraphModule) -> list[str]:
    return [n.target for n in graph.graph.nodes if n.op == "call_module"]


def test_zero_variance_gives_finite_outputs_and_gradients() -> None:
    """A flat image makes every norm's variance 0: in QAT its fake-quant must not hand
    rsqrt a 0 (inf, then NaN gradients), while observers learn or with the ranges fixed."""
    torch.manual_seed(0)
    graph = quantize.prepare_qat(EnhanceNet(ModelConfig(width=4)), torch.rand(2, 3, 32, 32))
    graph(torch.rand(2, 3, 32, 32))  # real ranges first
    flat = torch.full((2, 3, 32, 32), 0.5)
    y = graph(flat)
    y.mean().backward()
    assert torch.isfinite(y).all()
    assert all(torch.isfinite(p.grad).all() for p in graph.parameters() if p.grad is not None)
    # ranges fixed: rsqrt saturates at the top of its range, as the int8 model does
    quantize.freeze_observers(graph)
    graph.zero_grad()
    y = graph(flat)
    y.mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in graph.parameters() if p.grad is not None)
    assert torch.isfinite(y).all()


def test_rsqrt_of_a_zero_variance_saturates_as_in_int8() -> None:
    """With fixed ranges, a var + eps that rounds to 0 gives rsqrt's top code, as TFLite's
    RSQRT (and the reference model's inf, clamped) do, also where the range reaches above
    rsqrt(half a step), as ranges from PTQ can."""
    from torchao.quantization.pt2e.observer import MovingAverageMinMaxObserver

    kind = {"observer": MovingAverageMinMaxObserver, "quant_min": -128, "quant_max": 127, "dtype": torch.int8}
    var_eps, rstd = quantize.RsqrtInputFakeQuantize(**kind), FakeQuantize(**kind)
    var_eps(torch.tensor([0.0, 1.0]))  # step 1/255: 1e-3 rounds to 0
    rstd(torch.tensor([0.0, 300.0]))  # above rsqrt(half a step) = 22.6
    for fq in (var_eps, rstd):
        fq.disable_observer()
    top = (127 - rstd.zero_point) * rstd.scale
    assert torch.equal(rstd(torch.rsqrt(var_eps(torch.tensor([1e-3])))), top)


def test_prepare_leaves_the_callers_model_alone() -> None:
    model = EnhanceNet(ModelConfig(width=4)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    graph = quantize.prepare_qat(model, torch.rand(2, 3, 32, 32))
    torch.optim.SGD(graph.parameters(), lr=1.0).zero_grad()
    graph(torch.rand(2, 3, 32, 32)).mean().backward()
    torch.optim.SGD(graph.parameters(), lr=1.0).step()
    assert not model.training
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_calibration_batches_cycle_small_datasets() -> None:
    batches = calibrate.calibration_batches("builtin", images=40, crop=32)
    assert [b.shape for b in batches] == [(16, 3, 32, 32), (16, 3, 32, 32), (8, 3, 32, 32)]
    assert all(float(b.min()) >= 0 and float(b.max()) <= 1 for b in batches)


def test_calibration_batches_take_rectangles_and_shrink_with_them(tmp_path) -> None:
    """Whole-frame calibration (e.g. 1920x1080) on photos: one crop per batch once a crop holds
    more than 16 crops of 128x128; landscape photos give portrait crops (turned)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (400, 640, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    small = calibrate.calibration_batches(f"photos:{tmp_path}", images=3, crop=(96, 64))
    assert [b.shape for b in small] == [(3, 3, 96, 64)]
    large = calibrate.calibration_batches(f"photos:{tmp_path}", images=3, crop=(600, 400))
    assert [b.shape for b in large] == [(1, 3, 600, 400)] * 3


def test_calibrate_command_writes_a_ptq_checkpoint(tiny_checkpoint, tmp_path, capsys) -> None:
    from qaie.cli import main
    from qaie.quant.checkpoint import load_model

    out = tmp_path / "ptq.ckpt"
    args = ["calibrate", str(tiny_checkpoint), "--data", "builtin", "--images", "4", "--crop", "32"]
    assert main([*args, "--out", str(out)]) == 0
    loaded = load_model(out)
    assert loaded.quant == "ptq" and loaded.config == load_model(tiny_checkpoint).config
    ranges = [m for k, m in loaded.net.state_dict().items() if k.endswith("max_val")]
    assert ranges and all(torch.isfinite(r).all() for r in ranges)  # every observer saw data (not -inf)
    capsys.readouterr()
    assert main([*args, "--out", str(out)]) == 2  # exists
    assert main(["calibrate", str(out), "--data", "builtin", "--out", str(tmp_path / "again.ckpt")]) == 2
    assert "already quantized (ptq)" in capsys.readouterr().err


def test_calibrate_equalize_rescales_the_norm_inputs(tiny_checkpoint, tmp_path) -> None:
    """`--equalize` reaches qaie.quant.equalize (whose function is tested in test_equalize):
    each norm's input conv has its output channels multiplied by factors >= 1, the channel with
    the largest values by 1."""
    from qaie.cli import main
    from qaie.quant.checkpoint import load_model

    args = ["calibrate", str(tiny_checkpoint), "--data", "builtin", "--images", "4", "--crop", "32"]
    plain, equalized = tmp_path / "plain.ckpt", tmp_path / "eq.ckpt"
    assert main([*args, "--out", str(plain)]) == 0
    assert main([*args, "--equalize", "--out", str(equalized)]) == 0
    weights = [
        {k: v for k, v in load_model(p).net.state_dict().items() if "conv_norm" in k and k.endswith("weight")}
        for p in (plain, equalized)
    ]
    assert len(weights[0]) == 5  # the five refinement blocks' norms
    for name, w in weights[0].items():
        factor = (weights[1][name].flatten(1).norm(dim=1) / w.flatten(1).norm(dim=1)).double()
        assert factor.min() == pytest.approx(1, rel=1e-5) and factor.max() > 1.01, name
