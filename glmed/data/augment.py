"""Training augmentation that keeps image, label and every box aligned by construction.

An :class:`Augmentation` says what may change (flips, quarter turns, scale and aspect,
brightness, contrast, saturation, hue, gamma); :meth:`Augmentation.draw` picks one image's
change (:class:`AugmentDraw`) from a random generator, and :meth:`AugmentDraw.apply` turns
the image's and the label's readers into :class:`AugmentedReader` views of the changed
image. The sample builder (:class:`glmed.data.stage_samples.StageSampler`) then works on
those views exactly as on the originals: the global view, the coarse-to-fine box (found on
the changed label), the patch grid and every patch are all taken from the changed image, so
nothing has to be moved after the fact and nothing can fall out of alignment.

Why a view rather than MONAI's array transforms: a training image here may be a
6748×4499 photograph or a slide read lazily, and a sample only ever reads a small global
view and a few patches of it. Flipping, turning and rescaling the whole image first would
decode and resample 30 million pixels or more per sample; the view maps each read back to
the source and changes only the pixels read (the global view comes from the source's own
cheap downsampled view, then turned).

Colour changes are per pixel (a gamma curve, a gain, contrast about mid-grey, and hue and
saturation as one linear map in YIQ space), so a patch read on its own gets exactly the
colours it has in the changed whole image.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import ClassVar

import numpy as np

from glmed.conventions import Box, Size
from glmed.io.base import ImageReader

_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=np.float64)
_FROM_YIQ = np.linalg.inv(_TO_YIQ)


@dataclass(frozen=True)
class ColourChange:
    """One image's colour change, applied per pixel on intensities scaled to [0, 1].

    Attributes:
        gamma: exponent of the intensity curve (1 leaves it).
        brightness: gain (1 leaves it).
        contrast: stretch about mid-grey 0.5 (1 leaves it).
        saturation: chroma scale (1 leaves it; 0 is grey).
        hue: rotation of the hue, in turns (0 leaves it).
    """

    gamma: float = 1.0
    brightness: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0
    hue: float = 0.0

    @property
    def is_identity(self) -> bool:
        """True when applying it would change nothing."""
        return self == ColourChange()

    def chroma_matrix(self) -> np.ndarray:
        """The 3×3 map of RGB (rows: output channels) that scales and turns the chroma in YIQ space."""
        angle = 2 * math.pi * self.hue
        cos, sin = math.cos(angle), math.sin(angle)
        inner = np.array([[1.0, 0.0, 0.0],
                          [0.0, self.saturation * cos, -self.saturation * sin],
                          [0.0, self.saturation * sin, self.saturation * cos]])
        return _FROM_YIQ @ inner @ _TO_YIQ

    def curve(self, values: np.ndarray) -> np.ndarray:
        """The per-channel part (gamma, then gain and contrast) of intensities in [0, 1], unclipped."""
        if self.gamma != 1.0:
            values = np.power(values, np.float32(self.gamma))
        return values * np.float32(self.brightness * self.contrast) + np.float32(0.5 * (1.0 - self.contrast))

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """Change an ``H×W×C`` array of an integer or float dtype, returned in the same dtype.

        Integers are scaled by their dtype's maximum, floats are taken as [0, 1]. Hue and
        saturation apply to 3-channel images only; the rest to every channel alike. 8-bit
        pixels go through a 256-entry table for the per-channel part, which is what makes
        this cheap enough to run on every patch.
        """
        if self.is_identity:
            return pixels
        dtype = pixels.dtype
        top = float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else 1.0
        chroma = pixels.shape[-1] == 3 and (self.saturation != 1.0 or self.hue != 0.0)
        if dtype == np.uint8:
            table = np.clip(self.curve(np.arange(256, dtype=np.float32) / np.float32(255)), 0.0, 1.0)
            if not chroma:
                return np.rint(table * np.float32(255)).astype(np.uint8)[pixels]
            values = table[pixels]
        else:
            values = np.clip(self.curve(np.clip(pixels.astype(np.float32) / np.float32(top), 0.0, 1.0)), 0.0, 1.0)
        if chroma:
            values = values @ self.chroma_matrix().T.astype(np.float32)
        np.clip(values, 0.0, 1.0, out=values)
        if np.issubdtype(dtype, np.integer):
            values *= np.float32(top)
            values += np.float32(0.5)  # non-negative: truncation after +0.5 rounds
            return values.astype(dtype)
        return values.astype(dtype)


@dataclass(frozen=True)
class AugmentDraw:
    """One image's augmentation: the source scaled to ``scale``, flipped left-right, turned, recoloured.

    Attributes:
        scale: ``(row, column)`` factors the source is resampled by (1 leaves it).
        flip: mirror left-right (before turning).
        turns: quarter turns anticlockwise, 0 to 3 (as ``numpy.rot90``).
        colour: the colour change (images only; labels keep their values).
    """

    scale: tuple[float, float] = (1.0, 1.0)
    flip: bool = False
    turns: int = 0
    colour: ColourChange = field(default_factory=ColourChange)

    @property
    def is_identity(self) -> bool:
        """True when the view would show the source unchanged."""
        return self.scale == (1.0, 1.0) and not self.flip and self.turns % 4 == 0 and self.colour.is_identity

    def apply(self, image: ImageReader, label: ImageReader, min_size: int = 1) -> tuple[ImageReader, ImageReader]:
        """The changed image (resampled bilinearly, recoloured) and label (nearest, values kept).

        Both get the same geometry, so every box taken on one lies on the same pixels of the other.

        Args:
            image: the source image.
            label: its class map, same size.
            min_size: a zoom never takes a side below this (e.g. the patch size, which must
                fit) unless the side was already smaller; that side is then kept as it was.
        """
        if image.size != label.size:
            raise ValueError(f"{image.name}: label size {label.size} differs from image size {image.size}")
        if self.is_identity:
            return image, label
        scaled = _scaled_size(image.size, self.scale)
        size = (max(scaled[0], min(image.size[0], min_size)), max(scaled[1], min(image.size[1], min_size)))
        return (AugmentedReader(image, size, self.flip, self.turns, self.colour, nearest=False),
                AugmentedReader(label, size, self.flip, self.turns, ColourChange(), nearest=True))


@dataclass(frozen=True)
class Augmentation:
    """What training may change about an image; each image gets its own draw.

    Ranges are drawn uniformly in log space for factors (so 0.8–1.25 is symmetric about 1).

    Attributes:
        flips: mirror left-right half the time (with ``quarter_turns``, all 8 orientations).
        quarter_turns: turn by 0, 90, 180 or 270 degrees.
        scale: range of the zoom factor applied to both axes.
        aspect: range of the extra width : height stretch.
        brightness: largest relative change of the gain (0.1: 0.9–1.1).
        contrast: largest relative change of the contrast about mid-grey.
        saturation: largest relative change of the chroma.
        hue: largest hue rotation, in turns (0.02 is about 7 degrees).
        gamma: range of the intensity curve's exponent.
    """

    flips: bool = False
    quarter_turns: bool = False
    scale: tuple[float, float] = (1.0, 1.0)
    aspect: tuple[float, float] = (1.0, 1.0)
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0
    gamma: tuple[float, float] = (1.0, 1.0)

    PRESETS: ClassVar[tuple[str, ...]] = ("dermoscopy", "histology", "aerial", "none")
    """Names :meth:`preset` knows."""

    def __post_init__(self) -> None:
        problems = []
        for name in ("scale", "aspect", "gamma"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                problems.append(f"{name} must be a range 0 < low <= high, got {(low, high)}")
        for name in ("brightness", "contrast", "saturation"):
            if not 0 <= getattr(self, name) < 1:
                problems.append(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0 <= self.hue <= 0.5:
            problems.append(f"hue must be in [0, 0.5] turns, got {self.hue}")
        if problems:
            raise ValueError("invalid augmentation: " + "; ".join(problems))

    @classmethod
    def none(cls) -> Augmentation:
        """No change at all."""
        return cls()

    @classmethod
    def preset(cls, name: str) -> Augmentation:
        """The defaults for a kind of image.

        - ``dermoscopy``: any orientation (a photograph of skin has no up), zoom 0.8–1.25
          and aspect ±10% (camera distance), and the colour spread of dermoscopes and skin
          types: gain and contrast ±15%, saturation ±20%, hue ±0.03 turn, gamma 0.8–1.25.
        - ``histology``: any orientation, zoom ±10% (scanners differ a little), and H&E
          stain variation: saturation ±25% and hue ±0.04 turn, gain and contrast ±10%.
        - ``aerial``: any orientation, zoom ±10%, mild gain/contrast/saturation ±10%.
        - ``none``: nothing.
        """
        presets = {
            "dermoscopy": cls(flips=True, quarter_turns=True, scale=(0.8, 1.25), aspect=(0.9, 1.1), brightness=0.15,
                              contrast=0.15, saturation=0.2, hue=0.03, gamma=(0.8, 1.25)),
            "histology": cls(flips=True, quarter_turns=True, scale=(0.9, 1.1), brightness=0.1, contrast=0.1,
                             saturation=0.25, hue=0.04, gamma=(0.9, 1.1)),
            "aerial": cls(flips=True, quarter_turns=True, scale=(0.9, 1.1), brightness=0.1, contrast=0.1,
                          saturation=0.1),
            "none": cls(),
        }
        if name not in presets:
            raise ValueError(f"unknown augmentation preset {name!r}; known: {', '.join(cls.PRESETS)}")
        return presets[name]

    @property
    def enabled(self) -> bool:
        """True when some draw could change an image."""
        return self != Augmentation()

    def draw(self, rng: np.random.Generator) -> AugmentDraw:
        """One image's change. Always consumes the same numbers from ``rng``, whatever is enabled."""
        flip, turn, zoom, stretch, gain, contrast, chroma, hue, gamma = rng.random(9)

        def log_uniform(value: float, bounds: tuple[float, float]) -> float:
            low, high = math.log(bounds[0]), math.log(bounds[1])
            return float(math.exp(low + (high - low) * value))

        def around_one(value: float, spread: float) -> float:
            return float(1.0 + spread * (2 * value - 1))

        zoom_factor, stretch_factor = log_uniform(zoom, self.scale), log_uniform(stretch, self.aspect)
        colour = ColourChange(gamma=log_uniform(gamma, self.gamma), brightness=around_one(gain, self.brightness),
                              contrast=around_one(contrast, self.contrast),
                              saturation=around_one(chroma, self.saturation), hue=float(self.hue * (2 * hue - 1)))
        return AugmentDraw(scale=(zoom_factor / math.sqrt(stretch_factor), zoom_factor * math.sqrt(stretch_factor)),
                           flip=bool(self.flips and flip < 0.5), turns=int(turn * 4) if self.quarter_turns else 0,
                           colour=colour)

    def to_dict(self) -> dict[str, object]:
        """Plain values (for a run's records)."""
        return asdict(self)

    def with_values(self, **values: object) -> Augmentation:
        """A copy with some fields changed (checked again)."""
        known = {f.name for f in fields(self)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown augmentation settings {sorted(unknown)}; known: {sorted(known)}")
        return replace(self, **values)  # type: ignore[arg-type]


def as_augmentation(value: Augmentation | str | None) -> Augmentation:
    """An :class:`Augmentation` from itself, a preset's name, or None (no augmentation)."""
    if value is None:
        return Augmentation.none()
    if isinstance(value, str):
        return Augmentation.preset(value)
    if isinstance(value, Augmentation):
        return value
    raise TypeError(f"augmentation must be an Augmentation, a preset name or None, got {type(value).__name__}")


# -- the view ---------------------------------------------------------------------------


def _scaled_size(size: Size, scale: tuple[float, float]) -> Size:
    return (max(1, round(size[0] * scale[0])), max(1, round(size[1] * scale[1])))


def _turned(size: Size, turns: int) -> Size:
    return (size[1], size[0]) if turns % 2 else (int(size[0]), int(size[1]))


def orient(array: np.ndarray, flip: bool, turns: int) -> np.ndarray:
    """Mirror an ``H×W×...`` array left-right (when ``flip``), then turn it ``turns`` quarters anticlockwise."""
    if flip:
        array = array[:, ::-1]
    return np.ascontiguousarray(np.rot90(array, turns % 4, axes=(0, 1)))


def unorient_box(box: Box, size: Size, flip: bool, turns: int) -> Box:
    """Where a box of the oriented image lies in the image before :func:`orient` (of ``size``)."""
    r0, c0, r1, c1 = box
    for turn in range(turns % 4, 0, -1):
        width = _turned(size, turn - 1)[1]  # the width of what the turn was applied to
        r0, c0, r1, c1 = c0, width - r1, c1, width - r0
    if flip:
        width = size[1]
        c0, c1 = width - c1, width - c0
    return (r0, c0, r1, c1)


class AugmentedReader(ImageReader):
    """A source image resampled to ``scaled_size``, mirrored, turned and recoloured, read lazily.

    Only the pixels a read asks for are taken from the source and changed. The view has
    one level; its downsampled view (:meth:`resized`, :meth:`sampled`) comes from the
    source's own (pyramid-aware, streamed) one, then mirrored and turned.

    Args:
        source: the image (or label) as read from its file or array.
        scaled_size: ``(height, width)`` the source is resampled to before mirroring and turning.
        flip: mirror left-right.
        turns: quarter turns anticlockwise.
        colour: the colour change of every pixel read.
        nearest: resample by nearest neighbour (labels) instead of bilinearly (images).
    """

    def __init__(self, source: ImageReader, scaled_size: Size, flip: bool, turns: int,
                 colour: ColourChange | None = None, nearest: bool = False) -> None:
        self.source = source
        self.scaled_size: Size = (int(scaled_size[0]), int(scaled_size[1]))
        self.flip, self.turns = bool(flip), int(turns) % 4
        self.colour = colour or ColourChange()
        self.nearest = nearest
        self.name = source.name
        self.max_pixels = source.max_pixels

    @property
    def size(self) -> Size:
        """``(height, width)`` of the changed image."""
        return _turned(self.scaled_size, self.turns)

    @property
    def channels(self) -> int:
        """The source's channels."""
        return self.source.channels

    @property
    def dtype(self) -> np.dtype:
        """The source's dtype."""
        return self.source.dtype

    def _finish(self, pixels: np.ndarray) -> np.ndarray:
        return orient(self.colour(pixels), self.flip, self.turns)

    def _read_level(self, level: int, box: Box) -> np.ndarray:
        a0, b0, a1, b1 = unorient_box(box, self.scaled_size, self.flip, self.turns)
        if self.scaled_size == self.source.size:  # mirrored or turned only: no resampling
            return self._finish(self.source.read((a0, b0, a1, b1)))
        rows = _source_positions(a0, a1, self.source.size[0], self.scaled_size[0])
        cols = _source_positions(b0, b1, self.source.size[1], self.scaled_size[1])
        return self._finish(_resample(self.source, rows, cols, self.nearest))

    def resized(self, size: Size) -> np.ndarray:
        """The whole changed image at ``size``: the source's own downsampled view, changed."""
        before = _turned((int(size[0]), int(size[1])), self.turns)
        small = self.source.sampled(before) if self.nearest else self.source.resized(before)
        return self._finish(small)

    def sampled(self, size: Size) -> np.ndarray:
        """The whole changed image at ``size`` by nearest neighbour, from the source's own."""
        return self._finish(self.source.sampled(_turned((int(size[0]), int(size[1])), self.turns)))

    def crop(self, box: Box) -> ImageReader:
        """The box of the changed image as a view of its own, reading only its part of the source.

        The box is mapped back to the source (rounded outwards to whole source pixels), and
        that source region is resampled to exactly the box's size, so sizes match the box and
        an image and its label cropped alike stay aligned.
        """
        from glmed.io.region import RegionReader

        a0, b0, a1, b1 = unorient_box(box, self.scaled_size, self.flip, self.turns)
        (height, width), (scaled_h, scaled_w) = self.source.size, self.scaled_size
        region = (min(height - 1, math.floor(a0 * height / scaled_h)),
                  min(width - 1, math.floor(b0 * width / scaled_w)),
                  max(1, min(height, math.ceil(a1 * height / scaled_h))),
                  max(1, min(width, math.ceil(b1 * width / scaled_w))))
        return AugmentedReader(RegionReader(self.source, region), (a1 - a0, b1 - b0), self.flip, self.turns,
                               self.colour, self.nearest)

    def close(self) -> None:
        """Close the source."""
        self.source.close()


PILLOW_MARGIN = 3
"""Extra source pixels read around a region for Pillow's filter: enough for zooms down to 1/3."""


@dataclass(frozen=True)
class _Positions:
    """Source coordinates of a run of output pixels (one axis): nearest index, or two indices and a weight.

    ``start`` and ``stop`` are the run's edges in continuous source coordinates.
    """

    nearest: np.ndarray
    low: np.ndarray
    high: np.ndarray
    weight: np.ndarray
    start: float
    stop: float

    @property
    def span(self) -> tuple[int, int]:
        return int(min(self.low.min(), self.nearest.min())), int(max(self.high.max(), self.nearest.max())) + 1


def _source_positions(start: int, stop: int, source_length: int, scaled_length: int) -> _Positions:
    """Where output pixels ``start..stop`` of an axis resampled to ``scaled_length`` sit in the source."""
    centres = (np.arange(start, stop, dtype=np.float64) + 0.5) * (source_length / scaled_length)
    nearest = np.clip(np.floor(centres), 0, source_length - 1).astype(np.int64)
    position = np.clip(centres - 0.5, 0, source_length - 1)
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, source_length - 1)
    ratio = source_length / scaled_length
    return _Positions(nearest, low, high, (position - low).astype(np.float32), start * ratio,
                      min(stop * ratio, float(source_length)))


def _resample(source: ImageReader, rows: _Positions, cols: _Positions, nearest: bool) -> np.ndarray:
    """Read the source pixels the positions need, once, and resample them.

    8-bit images with 1 or 3 channels are resampled by Pillow (its bilinear filter over the
    exact source rectangle, in C: about 30 times faster than the numpy path on a 508-pixel
    patch); other pixel types go through the numpy bilinear below.
    """
    (r0, r1), (c0, c1) = rows.span, cols.span
    if nearest:
        region = source.read((r0, c0, r1, c1))
        return region[(rows.nearest - r0)[:, None], (cols.nearest - c0)[None, :]]
    if source.dtype == np.uint8 and source.channels in (1, 3):
        from PIL import Image

        # Shrinking, Pillow's filter reaches up to 1/scale pixels out: read that much more, so
        # a patch gets the same pixels as the same place of the whole view.
        height, width = source.size
        r0, c0 = max(0, r0 - PILLOW_MARGIN), max(0, c0 - PILLOW_MARGIN)
        r1, c1 = min(height, r1 + PILLOW_MARGIN), min(width, c1 + PILLOW_MARGIN)
        region = source.read((r0, c0, r1, c1))
        mode = "L" if region.shape[-1] == 1 else "RGB"
        picture = Image.fromarray(region[..., 0] if mode == "L" else region, mode)
        box = (cols.start - c0, rows.start - r0, cols.stop - c0, rows.stop - r0)
        out = np.asarray(picture.resize((len(cols.nearest), len(rows.nearest)), Image.Resampling.BILINEAR, box=box))
        return out.reshape(len(rows.nearest), len(cols.nearest), region.shape[-1])
    region = source.read((r0, c0, r1, c1))
    top, bottom = region[rows.low - r0].astype(np.float32), region[rows.high - r0].astype(np.float32)
    wr = rows.weight[:, None, None]
    blended = top * (1 - wr) + bottom * wr  # output rows × source columns × channels
    left, right = blended[:, cols.low - c0], blended[:, cols.high - c0]
    wc = cols.weight[None, :, None]
    values = left * (1 - wc) + right * wc
    if np.issubdtype(region.dtype, np.integer):
        info = np.iinfo(region.dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(region.dtype)
    return values.astype(region.dtype)
