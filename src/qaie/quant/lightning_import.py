"""Import the authors' training checkpoint (GenAI4E/QATIE) as an FP32 EnhanceNet checkpoint.

Their trainer is a LightningModule that holds the network as `self.model`, so the network's
keys carry the prefix `model.` inside the checkpoint's `state_dict`; the module's own state
(`criterion.*` loss buffers, `zero`, `max_psnr_value`, ...) sits beside it and is not the
network. After `prepare_qat_fx` the same keys hold the latent FP32 weights, next to fake-quant
state (`<conv>.weight_fake_quant.*`, `activation_post_process_<n>.*`): that state is dropped,
the FP32 weights are what EnhanceNet takes.

Their network is EnhanceNet under other names (MODULES, BLOCK), except that each decoder's one 1x1 conv
over concat(up, refined, a|b) is EnhanceNet's `reduce` plus `reduce_skip`: its weight is split
along the input channels. Width and the refiner ablations follow from the keys and shapes; any
key missing, left over or of another shape is refused, so nothing loads half.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from qaie.config import ModelConfig
from qaie.errors import QaieError
from qaie.nn.model import EnhanceNet
from qaie.quant.checkpoint import ZIP_MAGIC, load_plain
from qaie.quant.tflite_import import FUSED, ImportedModel

PREFIX = "model."  # the LightningModule's attribute that holds the network
WRAPPER = "inner_model."  # an older QAT wrapper their loader also strips
FAKE_QUANT = ("weight_fake_quant", "activation_post_process")  # QAT state: path components
# EnhanceNet's modules -> theirs (HybridMixUNet). Both decoder convs map to one of theirs.
MODULES = {
    "enc2.conv_a": "down1.a",
    "enc2.conv_b": "down1.b",
    "enc4.conv_a": "down2.a",
    "enc4.conv_b": "down2.b",
    "refine2": "unet_s2",
    "refine4": "unet_s4",
    "bottleneck": "bottleneck",
    "dec4.up.conv": "up_to_s4.conv",
    f"dec4.{FUSED}": "fuse4_reduce",
    f"dec4.{FUSED}_skip": "fuse4_reduce",
    "dec4.refine": "fuse4_refine",
    "dec2.up.conv": "up_to_s2.conv",
    f"dec2.{FUSED}": "fuse2_reduce",
    f"dec2.{FUSED}_skip": "fuse2_reduce",
    "dec2.refine": "fuse2_refine",
    "up1.conv": "up_to_s1.conv",
    "head": "head",
}
# Inside a refinement block (their UNetConvBlock; `conv` is the ablation's Conv3x3Refiner).
BLOCK = {
    "conv_norm": "conv_1",
    "norm": "norm1",
    "conv_point": "conv_1_1_1",
    "conv_a": "conv_2",
    "conv_b": "conv_3",
    "project": "conv_1_1",
    "conv": "conv",
}
# Their ablation names (hyper_parameters' ablation_model) that drop the output residual.
NO_RESIDUAL = {"hybrid_ablate_residual", "hybrid_ablate_all"}


def theirs(ours: str) -> str:
    """Their state-dict key (no Lightning prefix) for an EnhanceNet state-dict key."""
    module, _, leaf = ours.rpartition(".")
    if module in MODULES:
        return f"{MODULES[module]}.{leaf}"
    block, _, part = module.rpartition(".")
    return f"{MODULES[block]}.{BLOCK[part]}.{leaf}"


def import_lightning(path: str | os.PathLike, output_residual: bool | None = None) -> ImportedModel:
    """The FP32 EnhanceNet an authors' training checkpoint holds; QaieError (one line) for
    anything else: a qaie checkpoint, another network, a file that is not plain tensors.

    Args:
        path: their Lightning `.ckpt`, or a plain state dict of their network.
        output_residual: False for their `hybrid_ablate_residual` (the keys cannot tell it);
            None takes it from the checkpoint's hyper_parameters, else assumes the residual.
    """
    path = Path(path)
    data = _read(path)
    # (their Lightning checkpoints, with optimizer, loops and callbacks, are all plain data)
    raw = load_plain(
        path,
        "holds pickled Python objects, not only tensors and plain data; qaie does not unpickle them "
        "(re-save its state_dict alone where the file is trusted)",
        data,
    )
    if isinstance(raw, dict) and "model_config" in raw:
        raise QaieError(
            f"{path}: a qaie checkpoint already; use it as it is (qaie import reads the authors' files)"
        )
    lightning = isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict)
    state = raw["state_dict"] if lightning else raw
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise QaieError(
            f"{path}: holds no state dict (tensors by name, or a Lightning checkpoint's state_dict); "
            "not a checkpoint of the paper's network"
        )
    network, written, dropped = _network_keys(state)
    config = _config(path, network, written, raw, output_residual)
    net = EnhanceNet(config)
    net.load_state_dict(_mapped(path, network, written, net))
    net.eval()
    source = {
        "kind": "lightning" if lightning else "state-dict",
        "file": path.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "how": "the authors' FP32 weights renamed to EnhanceNet's; each decoder's 1x1 conv over "
        "concat(up, refined, a|b) split into reduce and reduce_skip"
        + (f"; {dropped} fake-quant/observer tensors dropped (QAT)" if dropped else ""),
        "qat": bool(dropped),
        "output_residual": _residual_origin(raw, output_residual),
    }
    for key in ("epoch", "global_step"):
        if lightning and isinstance(raw.get(key), int):
            source[key] = raw[key]
    return ImportedModel(net, config, source)


def _read(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise QaieError(f"{path}: cannot read ({err.strerror})") from err
    if not data.startswith(ZIP_MAGIC):
        raise QaieError(f"{path}: not a torch.save archive; give the authors' Lightning .ckpt or a .tflite")
    return data


def _network_keys(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str], int]:
    """The network's tensors by their key without prefixes, the key as the file writes it, and
    how many fake-quant tensors were dropped."""
    prefixed = any(k.startswith(PREFIX) for k in state)
    network: dict[str, torch.Tensor] = {}
    written: dict[str, str] = {}
    dropped = 0
    for key, value in state.items():
        if prefixed and not key.startswith(PREFIX):
            continue  # the LightningModule's own state: loss buffers, metric constants
        name = key.removeprefix(PREFIX) if prefixed else key
        name = name.removeprefix(WRAPPER)
        if any(part.startswith(FAKE_QUANT) for part in name.split(".")):
            dropped += 1
            continue
        network[name], written[name] = value, key
    return network, written, dropped


def _config(
    path: Path,
    network: dict[str, torch.Tensor],
    written: dict[str, str],
    raw: Any,
    output_residual: bool | None,
) -> ModelConfig:
    """Width from the first gated conv, the refiner ablations from which keys exist, the output
    residual from hyper_parameters or the caller."""
    prefix = PREFIX if any(w.startswith(PREFIX) for w in written.values()) else ""
    first = "down1.a.weight"
    if first not in network:
        raise QaieError(f"{path}: {prefix}{first} missing; not a checkpoint of the paper's network")
    width = int(network[first].shape[0])
    ablation = _hparams_ablation(raw)
    residual = output_residual
    if ablation is not None:
        if residual is False and ablation not in NO_RESIDUAL:
            raise QaieError(
                f"{path}: its hyper_parameters say ablation_model {ablation}, which keeps the output "
                "residual; drop --no-output-residual"
            )
        residual = ablation not in NO_RESIDUAL
    return ModelConfig(
        width=width,
        encoder_refiners="unet_s2.conv.weight" not in network,
        fusion_refiners="fuse2_refine.conv.weight" not in network,
        output_residual=True if residual is None else residual,
    )


def _hparams_ablation(raw: Any) -> str | None:
    hparams = raw.get("hyper_parameters") if isinstance(raw, dict) else None
    name = hparams.get("ablation_model") if isinstance(hparams, dict) else None
    return str(name).lower() if name is not None else None


def _residual_origin(raw: Any, output_residual: bool | None) -> str:
    if _hparams_ablation(raw) is not None:
        return "from hyper_parameters"
    if output_residual is None:
        return "assumed (the state dict cannot tell hybrid_ablate_residual from hybrid_base)"
    return "given (--no-output-residual)" if not output_residual else "given"


def _mapped(
    path: Path, network: dict[str, torch.Tensor], written: dict[str, str], net: EnhanceNet
) -> dict[str, torch.Tensor]:
    """EnhanceNet's state dict from theirs; QaieError naming the first missing, mismatched or
    left-over key (as the file writes it)."""
    prefix = PREFIX if any(w.startswith(PREFIX) for w in written.values()) else ""
    state: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for ours, param in net.state_dict().items():
        key = theirs(ours)
        if key not in network:
            raise QaieError(
                f"{path}: {prefix}{key} missing; not a complete checkpoint of the paper's network"
            )
        value = network[key]
        used.add(key)
        module = ours.rpartition(".")[0]
        if module.endswith(f".{FUSED}") and ours.endswith(".weight"):  # inputs: up, refined | a|b
            skip = net.get_submodule(f"{module}_skip").weight.shape[1]
            expected = (param.shape[0], param.shape[1] + skip, *param.shape[2:])
            _check_shape(path, written[key], value, expected, net.config)
            value = value[:, : param.shape[1]]
        elif module.endswith(f".{FUSED}_skip"):  # checked with reduce.weight, the same key
            value = value[:, -param.shape[1] :]
        else:
            _check_shape(path, written[key], value, tuple(param.shape), net.config)
        state[ours] = value.detach().to(torch.float32).clone()
    extra = next((k for k in network if k not in used), None)
    if extra is not None:
        raise QaieError(
            f"{path}: unexpected key {written[extra]}; not the paper's network (width {net.config.width})"
        )
    return state


def _check_shape(
    path: Path, key: str, value: torch.Tensor, expected: tuple[int, ...], config: ModelConfig
) -> None:
    if tuple(value.shape) != tuple(expected):
        raise QaieError(
            f"{path}: {key} is {tuple(value.shape)}, the paper's network of width {config.width} has "
            f"{tuple(expected)}"
        )
