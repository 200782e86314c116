import pytest
import torch

from qaie.config import ModelConfig
from qaie.nn.model import VARIANTS, EnhanceNet, InstanceNorm, macs_per_pixel, param_count

PAPER_PARAMS = {16: 230_083, 24: 515_811, 32: 915_331, 64: 3_651_331}


@pytest.mark.parametrize("width", sorted(PAPER_PARAMS))
def test_param_count_matches_paper(width: int) -> None:
    assert param_count(EnhanceNet(ModelConfig(width=width))) == PAPER_PARAMS[width]


def test_named_variants_are_the_paper_widths() -> None:
    assert {name: cfg.width for name, cfg in VARIANTS.items()} == {f"qaie_c{c}": c for c in PAPER_PARAMS}


def test_macs_match_paper_full_hd() -> None:
    # Paper: about 144 GMAC per 1920x1080 frame at c=32.
    gmac = macs_per_pixel(ModelConfig(width=32)) * 1920 * 1080 / 1e9
    assert 143 < gmac < 145


@pytest.mark.parametrize("size", [(8, 8), (17, 23), (31, 9), (100, 100), (65, 130)])
def test_any_size_keeps_shape_and_range(size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = EnhanceNet(ModelConfig(width=8)).eval()
    x = torch.rand(2, 3, *size)
    y = model(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()
    assert y.min() >= 0 and y.max() <= 1


@pytest.mark.parametrize(
    "ablation",
    [{"encoder_refiners": False}, {"fusion_refiners": False}, {"output_residual": False}],
)
def test_ablations_change_the_network(ablation: dict) -> None:
    full = EnhanceNet(ModelConfig(width=8))
    ablated = EnhanceNet(ModelConfig(width=8, **ablation))
    x = torch.rand(1, 3, 24, 24)
    assert ablated(x).shape == x.shape
    if "output_residual" in ablation:
        assert param_count(ablated) == param_count(full)
    else:
        assert param_count(ablated) < param_count(full)


def test_output_residual_switch_adds_the_input() -> None:
    """Same weights: the residual network outputs clamp(x + delta), the ablation clamp(delta).
    A bias of 0.5 on the head keeps delta inside (0, 1) so neither clamp hides the switch."""
    torch.manual_seed(0)
    residual = EnhanceNet(ModelConfig(width=8)).eval()
    with torch.no_grad():
        residual.head.weight *= 1e-3
        residual.head.bias.fill_(0.5)
    direct = EnhanceNet(ModelConfig(width=8, output_residual=False)).eval()
    direct.load_state_dict(residual.state_dict())
    x = torch.rand(1, 3, 24, 24) * 0.4  # x + delta stays below 1
    with torch.no_grad():
        delta = direct(x)
        assert float(delta.min()) > 0 and float(delta.max()) < 0.6
        torch.testing.assert_close(residual(x), x + delta)


def test_instance_norm_matches_torch() -> None:
    torch.manual_seed(0)
    ours, ref = InstanceNorm(6), torch.nn.InstanceNorm2d(6, affine=True)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        ours.bias.uniform_(-0.5, 0.5)
    ref.load_state_dict(ours.state_dict())  # same state dict keys
    x = torch.randn(3, 6, 11, 13) * 4 + 2
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)
