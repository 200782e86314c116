"""`qaie import`: the authors' released files, whichever kind, as an FP32 EnhanceNet checkpoint.

Two kinds exist: the INT8 `.tflite` files of their release (quant.tflite_import) and the
Lightning checkpoints their training code writes (quant.lightning_import). The file's name
decides, and a torch.save archive under any name is read as a checkpoint, so a renamed file
still gets the right reader and its error messages.
"""

from __future__ import annotations

import os
from pathlib import Path

from qaie.errors import QaieError
from qaie.quant.lightning_import import import_lightning
from qaie.quant.tflite_import import ImportedModel, import_tflite
from qaie.runtime import registry


def is_torch_file(path: Path) -> bool:
    """A name torch files use, or a zip archive (what torch.save writes) under another name."""
    from qaie.quant.checkpoint import ZIP_MAGIC

    if registry.is_checkpoint_name(path):
        return True
    try:
        with path.open("rb") as f:
            return f.read(len(ZIP_MAGIC)) == ZIP_MAGIC
    except OSError:
        return False  # the reader says why


def import_checkpoint(
    path: str | os.PathLike, out: str | os.PathLike, output_residual: bool | None = None
) -> ImportedModel:
    """Write the FP32 checkpoint of `path` (a .tflite or the authors' .ckpt) to `out`, atomically.

    Args:
        output_residual: False for their `hybrid_ablate_residual` training checkpoints (see
            quant.lightning_import); a .tflite takes none.
    """
    from qaie.quant.checkpoint import save_model

    path = Path(path)
    if is_torch_file(path):
        imported = import_lightning(path, output_residual)
    elif output_residual is not None:
        raise QaieError("--no-output-residual applies to the authors' training checkpoints (.ckpt) only")
    else:
        imported = import_tflite(path)
    save_model(out, imported.net, imported.config, source=imported.source)
    return imported
