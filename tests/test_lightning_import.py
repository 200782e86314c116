"""`qaie import` of the authors' training checkpoint (GenAI4E/QATIE's Lightning .ckpt).

No such file exists here, so the tests write one: a random EnhanceNet in their layout, with
their key names produced by a table written here (checked against key names as they appear in
their model_builder.py, and by count), and a forward pass over that state dict as their
HybridMixUNet.forward computes it. The forward pins the mapping to their network, not to our
table: the import must give the source network's output exactly.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from qaie.cli import main
from qaie.config import ModelConfig
from qaie.nn.model import EnhanceNet

# A few of their keys, as written in their model_builder.py (HybridMixUNet, UNetConvBlock).
THEIR_KEYS = [
    "down1.a.weight",
    "down2.b.bias",
    "unet_s2.conv_1.weight",
    "unet_s4.norm1.bias",
    "bottleneck.conv_1_1_1.weight",
    "bottleneck.conv_2.weight",
    "fuse4_reduce.weight",
    "fuse4_refine.conv_3.bias",
    "fuse2_refine.conv_1_1.weight",
    "up_to_s1.conv.weight",
    "head.bias",
]
BASE_KEYS = 80  # 5 UNetConvBlocks x 12, 2 DownBlocks x 4, 3 UpBlocks x 2, 2 reduce convs x 2, head 2

_OURS_TO_THEIRS = [  # (EnhanceNet module prefix, theirs), longest first
    ("enc2.conv_a", "down1.a"), ("enc2.conv_b", "down1.b"),
    ("enc4.conv_a", "down2.a"), ("enc4.conv_b", "down2.b"),
    ("dec4.up.conv", "up_to_s4.conv"), ("dec2.up.conv", "up_to_s2.conv"), ("up1.conv", "up_to_s1.conv"),
    ("dec4.refine", "fuse4_refine"), ("dec2.refine", "fuse2_refine"),
    ("refine2", "unet_s2"), ("refine4", "unet_s4"), ("bottleneck", "bottleneck"), ("head", "head"),
]  # fmt: skip
_IN_BLOCK = {"conv_norm": "conv_1", "norm": "norm1", "conv_point": "conv_1_1_1", "conv_a": "conv_2",
             "conv_b": "conv_3", "project": "conv_1_1", "conv": "conv"}  # fmt: skip


def their_state_dict(net: EnhanceNet) -> dict[str, torch.Tensor]:
    """`net`'s weights under their names; each decoder's reduce and reduce_skip as the one 1x1
    conv over concat(up, refined, a|b) that their fuse*_reduce is."""
    ours = net.state_dict()
    out: dict[str, torch.Tensor] = {}
    for dec, fused in (("dec4", "fuse4_reduce"), ("dec2", "fuse2_reduce")):
        out[f"{fused}.weight"] = torch.cat(
            [ours.pop(f"{dec}.reduce.weight"), ours.pop(f"{dec}.reduce_skip.weight")], 1
        )
        out[f"{fused}.bias"] = ours.pop(f"{dec}.reduce.bias")
    for key, value in ours.items():
        prefix, name = next((o, t) for o, t in _OURS_TO_THEIRS if key.startswith(f"{o}."))
        rest = key[len(prefix) + 1 :].split(".")
        if len(rest) == 2:
            rest[0] = _IN_BLOCK[rest[0]]
        out[".".join([name, *rest])] = value.clone()
    return out


def their_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, residual: bool = True) -> torch.Tensor:
    """HybridMixUNet's forward (as read in their model_builder.py), over their state dict."""

    def conv(name: str, t: torch.Tensor, stride: int = 1) -> torch.Tensor:
        w = sd[f"{name}.weight"]
        return F.conv2d(t, w, sd[f"{name}.bias"], stride, w.shape[-1] // 2)

    def act(t: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(t, 0.2)

    def refiner(name: str, t: torch.Tensor) -> torch.Tensor:
        if f"{name}.conv.weight" in sd:  # Conv3x3Refiner (ablation)
            return act(conv(f"{name}.conv", t))
        normed = F.instance_norm(conv(f"{name}.conv_1", t), weight=sd[f"{name}.norm1.weight"],
                                 bias=sd[f"{name}.norm1.bias"], eps=1e-5)  # fmt: skip
        both = torch.cat([act(normed), conv(f"{name}.conv_1_1_1", t)], 1)
        return act(conv(f"{name}.conv_3", act(conv(f"{name}.conv_2", both)))) + conv(f"{name}.conv_1_1", both)

    def up(name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return conv(f"{name}.conv", F.interpolate(t, size=like.shape[-2:], mode="nearest"))

    lf1, rt1 = torch.tanh(conv("down1.a", x, 2)), torch.tanh(conv("down1.b", x, 2))
    s2 = refiner("unet_s2", lf1 * rt1)
    lf2, rt2 = torch.tanh(conv("down2.a", s2, 2)), torch.tanh(conv("down2.b", s2, 2))
    s4 = refiner("unet_s4", lf2 * rt2)
    b = refiner("bottleneck", F.max_pool2d(s4, 2, 2))
    f4 = refiner("fuse4_refine", conv("fuse4_reduce", torch.cat([up("up_to_s4", b, s4), s4, lf2, rt2], 1)))
    f2 = refiner("fuse2_refine", conv("fuse2_reduce", torch.cat([up("up_to_s2", f4, s2), s2, lf1, rt1], 1)))
    delta = conv("head", up("up_to_s1", f2, x))
    return torch.clamp(x + delta if residual else delta, 0.0, 1.0)


def random_net(config: ModelConfig, seed: int = 0) -> EnhanceNet:
    """Every parameter random (biases and norm affines too), the head small so outputs stay
    inside [0, 1] where the clamp would hide differences."""
    torch.manual_seed(seed)
    net = EnhanceNet(config).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(
                torch.randn_like(p) * (0.3 if p.ndim > 1 else 0.1)
                + (1.0 if name.endswith("norm.weight") else 0)
            )
        net.head.weight.mul_(0.05)
        net.head.bias.zero_()
        if not config.output_residual:
            net.head.bias.fill_(0.5)
    return net


def _same_as_theirs(
    net: EnhanceNet, sd: dict[str, torch.Tensor], x: torch.Tensor, residual: bool = True
) -> None:
    """The test's own mapping is theirs: `net` and their forward over `sd` agree (in float64,
    where the two ways of writing the instance norm round alike)."""
    double = {k: v.double() for k, v in sd.items()}
    torch.testing.assert_close(
        their_forward(double, x.double(), residual), copy.deepcopy(net).double()(x.double())
    )


def qat_state(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Their state dict as prepare_qat_fx leaves it: fake-quant state beside each conv weight
    and activation fake-quant modules at the top of the GraphModule."""
    out = dict(sd)
    observer = {"fake_quant_enabled": torch.ones(1, dtype=torch.long), "observer_enabled": torch.ones(1, dtype=torch.long),
                "scale": torch.ones(1), "zero_point": torch.zeros(1, dtype=torch.int32),
                "activation_post_process.eps": torch.ones(1), "activation_post_process.min_val": torch.tensor(-1.0),
                "activation_post_process.max_val": torch.tensor(1.0)}  # fmt: skip
    for key in [k for k in sd if k.endswith(".weight") and sd[k].ndim == 4 and not k.startswith("head.")]:
        out |= {f"{key}_fake_quant.{n}": v for n, v in observer.items()}
    for i in range(3):
        out |= {f"activation_post_process_{i}.{n}": v for n, v in observer.items()}
    return out


def lightning(sd: dict[str, torch.Tensor], **extra) -> dict:
    """A Lightning checkpoint of their DPEDLightningModule (network at `self.model`, the loss
    and PSNR constants beside it)."""
    state = {f"model.{k}": v for k, v in sd.items()}
    state |= {"max_psnr_value": torch.tensor(100.0), "max_pixel_value": torch.tensor(1.0), "zero": torch.tensor(0.0),
              "criterion.psnr.eps": torch.tensor(1e-8)}  # fmt: skip
    return {"epoch": 7, "global_step": 700, "pytorch-lightning_version": "2.5.0", "state_dict": state,
            "optimizer_states": [], "lr_schedulers": [], **extra}  # fmt: skip


def _import(path: Path, out: Path, *flags: str) -> torch.nn.Module:
    from qaie.quant.checkpoint import load_model

    assert main(["import", str(path), "--out", str(out), *flags]) == 0
    return load_model(out).net


def test_their_layout_is_as_read_in_their_code():
    sd = their_state_dict(EnhanceNet(ModelConfig(width=8)))
    assert len(sd) == BASE_KEYS
    assert set(THEIR_KEYS) <= set(sd)
    assert sd["fuse4_reduce.weight"].shape == (16, 64, 1, 1)  # 8c -> 2c over [up, s4, skip]


@pytest.mark.parametrize("qat", [False, True], ids=["fp32", "qat"])
def test_import_gives_the_source_network(qat: bool, tmp_path: Path, capsys):
    from qaie.quant.checkpoint import read_checkpoint

    config = ModelConfig(width=4)
    net = random_net(config)
    sd = their_state_dict(net)
    x = torch.rand(1, 3, 36, 44, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = net(x)
        _same_as_theirs(net, sd, x)
    path = tmp_path / "theirs.ckpt"
    torch.save(lightning(qat_state(sd) if qat else sd, hyper_parameters={"channels": 4}), path)
    imported = _import(path, tmp_path / "fp32.ckpt")
    with torch.no_grad():
        torch.testing.assert_close(imported(x), expected, rtol=0, atol=0)
    assert "width 4, " in capsys.readouterr().out
    source = read_checkpoint(tmp_path / "fp32.ckpt")["source"]
    assert source["kind"] == "lightning" and source["file"] == "theirs.ckpt" and source["epoch"] == 7
    assert source["qat"] is qat and len(source["sha256"]) == 64


def test_ablated_plain_state_dict(tmp_path: Path, capsys):
    """Their hybrid_ablate_all as a plain state dict (.pth): refiners from the keys, the output
    residual from the flag (its keys are hybrid_base's)."""
    config = ModelConfig(width=4, encoder_refiners=False, fusion_refiners=False, output_residual=False)
    net = random_net(config)
    sd = their_state_dict(net)
    assert {"unet_s2.conv.weight", "fuse2_refine.conv.bias"} <= set(sd)
    x = torch.rand(1, 3, 24, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        _same_as_theirs(net, sd, x, residual=False)
    torch.save(sd, tmp_path / "theirs.pth")
    imported = _import(tmp_path / "theirs.pth", tmp_path / "fp32.ckpt", "--no-output-residual")
    assert imported.config == config
    with torch.no_grad():
        torch.testing.assert_close(imported(x), net(x), rtol=0, atol=0)
    assert "no encoder refiners, no fusion refiners, no output residual;" in capsys.readouterr().out
