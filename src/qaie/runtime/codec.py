"""How a model tensor stores real values: the one affine codec of every runtime.

A tensor is float (values as they are) or integers q with value = (q - zero_point) * scale. Image
tensors hold pixel / 255 (e.g. int8 with scale 1/255, zero point -128); the maps and statistics
that cross the stages of a split model (`qaie.runtime.wholephoto`) hold their own values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qaie.imageio import to_uint8


@dataclass(frozen=True)
class Codec:
    """Float (scale and zero point unused) or integers q with value = (q - zero_point) * scale."""

    dtype: np.dtype
    scale: float = 1.0
    zero_point: int = 0

    @classmethod
    def from_details(cls, details: dict) -> Codec | None:
        """The codec of a tensor as an interpreter describes it (dtype, (scale, zero point));
        None for integers without a positive scale, which hold no real values."""
        dtype = np.dtype(details["dtype"])
        if dtype.kind == "f":
            return cls(dtype)
        scale, zero_point = details["quantization"]
        if dtype.kind in "iu" and scale > 0:
            return cls(dtype, float(scale), int(zero_point))
        return None

    @property
    def is_int(self) -> bool:
        return self.dtype.kind in "iu"

    def encode(self, values: np.ndarray, *, scratch: bool = False) -> np.ndarray:
        """Real values -> tensor values (rounded half to even, clipped to the integer range).

        One float temporary of `values`' size, or none with `scratch` (a float array of the
        caller's that may be overwritten): a stage's outputs are hundreds of MB at 12 MP.
        """
        if not self.is_int:
            return values.astype(self.dtype)
        info = np.iinfo(self.dtype)
        q = np.multiply(values, 1.0 / self.scale, out=values if scratch else None)
        np.rint(q, out=q)
        q += self.zero_point
        np.clip(q, info.min, info.max, out=q)
        return q.astype(self.dtype)

    def decode(self, q: np.ndarray) -> np.ndarray:
        """Tensor values -> real values (float64)."""
        if not self.is_int:
            return q.astype(np.float64)
        return (q.astype(np.float64) - self.zero_point) * self.scale

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 pixels -> the values of a tensor that holds pixel / 255 (in float32 arithmetic)."""
        if not self.is_int:
            return (pixels * np.float32(1.0 / 255.0)).astype(self.dtype)
        q = np.rint(pixels * np.float32(1.0 / (255.0 * self.scale))) + self.zero_point
        info = np.iinfo(self.dtype)
        return np.clip(q, info.min, info.max).astype(self.dtype)

    def decode_pixels(self, values: np.ndarray) -> np.ndarray:
        """Values of a tensor that holds pixel / 255 -> uint8 pixels (float32 arithmetic)."""
        if not self.is_int:
            pixels = values.astype(np.float32) * np.float32(255.0)
        else:
            pixels = (values.astype(np.float32) - self.zero_point) * np.float32(self.scale * 255.0)
        return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)

    def pixel_table(self) -> np.ndarray | None:
        """For 8-bit codes: uint8 (256,) with table[code.view(uint8)] == to_uint8(decode(code)),
        the exact float64 rounding done once per code instead of once per pixel; None otherwise."""
        if self.dtype.itemsize != 1 or not self.is_int:
            return None
        codes = np.arange(256, dtype=np.uint8).view(self.dtype)
        return to_uint8(self.decode(codes))

    def image_table(self) -> np.ndarray:
        """(256,) tensor values with table[pixel] == encode(pixel / float32(255)) for every uint8
        pixel: the encoding of a photo as a table look-up, value for value."""
        return self.encode(np.arange(256, dtype=np.uint8) / np.float32(255.0))


def look_up(table: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """table[codes] for a (256,) table and 8-bit codes (any strides), indexed by their bytes. A
    table of 1-byte values that is the identity with some bits flipped (int8 p - 128 for a pixel
    p, and back) is applied as that XOR: the same values, about 10x faster than indexing."""
    index = codes.view(np.uint8)
    if table.itemsize == 1:
        flips = table.view(np.uint8)[0]
        if np.array_equal(table.view(np.uint8), np.arange(256, dtype=np.uint8) ^ flips):
            return (index ^ flips).view(table.dtype)
    return table[index]
