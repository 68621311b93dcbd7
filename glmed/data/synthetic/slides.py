"""Whole-slide files to test slide code on: Aperio-style SVS and generic tiled TIFF pyramids of H&E tissue on glass.

Real slides cannot ship with the tests, and the tifffile reader alone hides what OpenSlide does
differently (vendor detection, level layout, closing). :func:`write_synthetic_slide` writes a
file OpenSlide recognises by content, as vendor ``aperio`` (an ``Aperio`` ImageDescription with
``AppMag`` and ``MPP`` fields, reduced levels and a thumbnail, label and macro image laid out as
Aperio's scanners lay them out) or as ``generic-tiff`` (reduced levels marked as such, the
µm/px in the TIFF resolution tags). Both report ``openslide.mpp-x``.

The slide is a :class:`TissueScene`: a few irregular tissue pieces on bright glass, defined at
every level-0 position at once, so any region can be rendered at any scale without rendering
the rest. The file is written tile by tile from it, each level rendered at its own scale, so
memory stays at one tile and a small field whatever the slide's size (a 60k x 60k slide takes
the time to encode its tiles, not 10 GB), and a test can render the very pixels a reader should
return (:meth:`TissueScene.render`) or the tissue it should find (:meth:`TissueScene.tissue`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from glmed.conventions import Box, Size
from glmed.data.synthetic._common import fractal_noise
from glmed.data.synthetic.histology import EOSIN, GLASS, HAEMATOXYLIN
from glmed.io.writers import atomic_path, check_tile

KINDS = ("aperio", "tiff")
"""What :func:`write_synthetic_slide` writes: an Aperio SVS, or a generic tiled pyramidal TIFF."""

VENDORS = {"aperio": "aperio", "tiff": "generic-tiff"}
"""The ``openslide.vendor`` OpenSlide reports for each kind."""

FIELD_CELLS = 512
"""Cells along the longest side of the coarse field that shapes the tissue."""

TEXTURE = 256
"""Side of the periodic textures (nuclei, sensor noise) tiled over the slide, in level-0 pixels."""

COMPRESSIONS = ("jpeg", "zlib", "lzw", None)


@dataclass(frozen=True, eq=False)
class TissueScene:
    """A slide defined everywhere: tissue where a smooth field exceeds a threshold, glass elsewhere.

    Positions are level-0 pixels. A pixel of a level with downsample ``(dr, dc)`` stands for the
    level-0 point at its centre, ``((row + 0.5) * dr, (col + 0.5) * dc)``; the field is
    interpolated bilinearly there, so tissue outlines are smooth at every scale.

    Attributes:
        size: ``(height, width)`` at level 0.
        field: the coarse field, one value per cell of ``cell`` level-0 pixels.
        cell: level-0 pixels per field cell (the same along both axes).
        threshold: tissue is where the interpolated field exceeds it.
        tissue_colours: ``TEXTURE x TEXTURE x 4`` uint8, the periodic colour of tissue (RGB and a
            zero byte, so a pixel is one 32-bit word): eosin pink mixed with haematoxylin purple
            by a smooth stain texture, plus sensor noise.
        glass_colours: the same for glass: near-white plus the same sensor noise.
        pieces: the centres ``(row, col)`` of the tissue pieces, in level-0 pixels.
    """

    size: Size
    field: np.ndarray
    cell: float
    threshold: float
    tissue_colours: np.ndarray
    glass_colours: np.ndarray
    pieces: tuple[tuple[float, float], ...]

    def tissue(self, box: Box | None = None, downsample: float | tuple[float, float] = 1.0) -> np.ndarray:
        """Where tissue lies in ``box`` on a level of ``downsample``, as a bool ``h x w`` array.

        Args:
            box: ``(row0, col0, row1, col1)`` in the level's own pixels; the whole level by default.
            downsample: level-0 pixels per level pixel, one number or ``(rows, cols)``.
        """
        return self._field(*self._grid(box, downsample)) > self.threshold

    def render(self, box: Box | None = None, downsample: float | tuple[float, float] = 1.0) -> np.ndarray:
        """The RGB pixels of ``box`` on a level of ``downsample``, as ``h x w x 3`` uint8.

        Deterministic per position: rendering a region alone or as part of a larger one gives
        the same pixels, so a reader's output can be compared with it exactly.
        """
        return self._render(*self._grid(box, downsample))[0]

    def _render(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """RGB pixels and tissue at the level-0 points ``rows x cols``.

        Colours are gathered as one 32-bit word per pixel (RGB plus a padding byte), a quarter
        of the work of gathering three bytes.
        """
        tissue = self._field(rows, cols) > self.threshold
        texture = (np.floor(rows).astype(np.int64)[:, None] % TEXTURE) * TEXTURE + (
            np.floor(cols).astype(np.int64)[None, :] % TEXTURE
        )
        words = np.take(_as_words(self.glass_colours), texture)
        if tissue.any():
            words = np.where(tissue, np.take(_as_words(self.tissue_colours), texture), words)
        return words.view(np.uint8).reshape(*words.shape, 4)[..., :3].copy(), tissue

    def level_sizes(self, levels: int, step: int) -> tuple[Size, ...]:
        """``(height, width)`` of ``levels`` levels, each ``step`` times smaller (``ceil``) than the last."""
        return tuple((-(-self.size[0] // step**k), -(-self.size[1] // step**k)) for k in range(levels))

    def tissue_fraction(self, longest: int = 2048) -> float:
        """The fraction of the slide covered by tissue, measured on a view at most ``longest`` pixels wide."""
        scale = max(1.0, max(self.size) / longest)
        view = (max(1, round(self.size[0] / scale)), max(1, round(self.size[1] / scale)))
        downsample = (self.size[0] / view[0], self.size[1] / view[1])
        return float(self.tissue((0, 0, *view), downsample).mean())

    def _grid(self, box: Box | None, downsample: float | tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
        """The level-0 rows and columns that the pixel centres of ``box`` stand for."""
        dr, dc = (downsample, downsample) if isinstance(downsample, (int, float)) else downsample
        dr, dc = float(dr), float(dc)
        if dr <= 0 or dc <= 0:
            raise ValueError(f"downsample must be positive, got {downsample}")
        if box is None:
            box = (0, 0, math.ceil(self.size[0] / dr), math.ceil(self.size[1] / dc))
        r0, c0, r1, c1 = (int(v) for v in box)
        if r1 <= r0 or c1 <= c0:
            raise ValueError(f"box {tuple(box)} is empty")
        return (np.arange(r0, r1) + 0.5) * dr, (np.arange(c0, c1) + 0.5) * dc

    def _field(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """The field interpolated bilinearly at every (row, col) of the two axes, one axis after the other.

        Gathers and sums only (no matrix products, whose BLAS threads crawl on a busy machine).
        """
        row_low, row_frac = _neighbours(rows, self.cell, self.field.shape[0])
        col_low, col_frac = _neighbours(cols, self.cell, self.field.shape[1])
        first, last = int(col_low.min()), int(col_low.max()) + 2
        strip = self.field[:, first:last]
        along = strip[row_low] * (1.0 - row_frac)[:, None] + strip[row_low + 1] * row_frac[:, None]
        col_low = col_low - first
        return along[:, col_low] * (1.0 - col_frac) + along[:, col_low + 1] * col_frac


def _neighbours(positions: np.ndarray, cell: float, count: int) -> tuple[np.ndarray, np.ndarray]:
    """For each level-0 position, the field cell before it and how far it lies towards the next (edges clamped).

    ``count`` is at least 2, so the next cell always exists.
    """
    where = np.clip(positions / cell - 0.5, 0.0, count - 1.0)
    low = np.minimum(np.floor(where).astype(np.int64), count - 2)
    return low, where - low


def make_tissue_scene(size: Size, seed: int = 0, tissue_fraction: float = 0.3, pieces: int = 3) -> TissueScene:
    """Draw a slide: ``pieces`` irregular tissue pieces covering about ``tissue_fraction`` of it.

    Each piece is an elongated bump of a smooth field, roughened by fractal noise; the field's
    threshold is its ``1 - tissue_fraction`` quantile, so the covered fraction is the one asked
    for to within a percent or so (see :meth:`TissueScene.tissue_fraction`).

    Args:
        size: ``(height, width)`` at level 0, at least 16 pixels each.
        seed: everything is drawn from it.
        tissue_fraction: in ``[0, 1)``; 0 gives blank glass.
        pieces: number of tissue pieces (some may touch and merge), at least 1.
    """
    height, width = (int(size[0]), int(size[1]))
    if min(height, width) < 16:
        raise ValueError(f"a slide must be at least 16 x 16 pixels, got {tuple(size)}")
    if not 0.0 <= tissue_fraction < 1.0:
        raise ValueError(f"tissue_fraction must be in [0, 1), got {tissue_fraction}")
    if pieces < 1:
        raise ValueError(f"pieces must be at least 1, got {pieces}")
    rng = np.random.default_rng([seed, 15])
    cell = max(1.0, max(height, width) / FIELD_CELLS)
    grid = (max(2, math.ceil(height / cell)), max(2, math.ceil(width / cell)))
    rows, cols = ((np.arange(n) + 0.5) * cell for n in grid)
    radius = math.sqrt(max(tissue_fraction, 0.01) * height * width / (math.pi * pieces))
    centres: list[tuple[float, float]] = []
    field = np.zeros(grid, dtype=np.float64)
    for _ in range(pieces):
        for _attempt in range(50):  # keep pieces apart when there is room
            centre = (rng.uniform(0.15, 0.85) * height, rng.uniform(0.15, 0.85) * width)
            if all(math.dist(centre, other) > 1.6 * radius for other in centres):
                break
        centres.append(centre)
        angle, aspect = rng.uniform(0, math.pi), rng.uniform(1.0, 2.2)
        along, across = radius * math.sqrt(aspect), radius / math.sqrt(aspect)
        dr, dc = rows[:, None] - centre[0], cols[None, :] - centre[1]
        u = dr * math.cos(angle) + dc * math.sin(angle)
        v = -dr * math.sin(angle) + dc * math.cos(angle)
        field = np.maximum(field, np.exp(-0.5 * ((u / along) ** 2 + (v / across) ** 2)))
    field += 0.12 * fractal_noise(rng, grid, max(grid) / 8, 1.0, 0.6).astype(np.float64)
    threshold = float(np.quantile(field, 1.0 - tissue_fraction)) if tissue_fraction > 0 else float(field.max()) + 1.0
    # Periodic textures: white noise low-passed in Fourier space wraps around seamlessly.
    spectrum = np.fft.fft2(rng.standard_normal((TEXTURE, TEXTURE)))
    frequency = np.fft.fftfreq(TEXTURE)
    spectrum *= np.exp(-(frequency[:, None] ** 2 + frequency[None, :] ** 2) / (2 * 0.08**2))
    nuclei = np.real(np.fft.ifft2(spectrum))
    nuclei = (nuclei - nuclei.mean()) / nuclei.std()
    noise = rng.normal(0.0, 2.5, (TEXTURE, TEXTURE, 3))
    stain = np.clip(0.3 + 0.3 * nuclei, 0.0, 1.0)[..., None]
    tissue_colours = _to_uint8((1 - stain) * EOSIN + stain * HAEMATOXYLIN + noise)
    glass_colours = _to_uint8(GLASS + noise)
    return TissueScene((height, width), field, cell, threshold, tissue_colours, glass_colours, tuple(centres))


def _to_uint8(colours: np.ndarray) -> np.ndarray:
    """``T x T x 3`` colours as a ``T x T x 4`` uint8 table: RGB rounded and clipped, then a zero byte."""
    table = np.zeros((*colours.shape[:2], 4), dtype=np.uint8)
    table[..., :3] = np.clip(np.rint(colours), 0, 255)
    return table


def _as_words(colours: np.ndarray) -> np.ndarray:
    """A ``T x T x 4`` uint8 table seen (no copy) as ``T * T`` 32-bit words, one per pixel."""
    return colours.reshape(-1, 4).view(np.uint32)[:, 0]


@dataclass(frozen=True, eq=False)
class SyntheticSlide:
    """What :func:`write_synthetic_slide` wrote.

    Attributes:
        path: the file.
        kind: ``"aperio"`` or ``"tiff"``.
        vendor: the ``openslide.vendor`` OpenSlide reports for it.
        scene: the slide's definition, to render any region of any level or its tissue.
        level_sizes: ``(height, width)`` of each pyramid level, largest first.
        mpp: microns per level-0 pixel, both axes.
        tissue_fraction: the fraction of level 0 covered by tissue, counted while writing it.
    """

    path: Path
    kind: str
    vendor: str
    scene: TissueScene
    level_sizes: tuple[Size, ...]
    mpp: float
    tissue_fraction: float

    @property
    def size(self) -> Size:
        """``(height, width)`` at level 0."""
        return self.level_sizes[0]

    def level_downsamples(self) -> tuple[tuple[float, float], ...]:
        """``(rows, cols)`` level-0 pixels per pixel of each level, as the levels were rendered."""
        height, width = self.size
        return tuple((height / h, width / w) for h, w in self.level_sizes)

    def render_level(self, level: int, box: Box | None = None) -> np.ndarray:
        """The pixels written for ``box`` (in ``level``'s own pixels) of ``level``, before compression."""
        return self.scene.render(box or (0, 0, *self.level_sizes[level]), self.level_downsamples()[level])


def write_synthetic_slide(
    path: str | os.PathLike,
    size: Size,
    *,
    seed: int = 0,
    tissue_fraction: float = 0.3,
    pieces: int = 3,
    mpp: float = 0.25,
    kind: str = "aperio",
    tile: int = 256,
    levels: int | None = None,
    step: int | None = None,
    compression: str | None = "jpeg",
    quality: int = 90,
    associated: bool = True,
    progress: bool = False,
) -> SyntheticSlide:
    """Write a generated H&E slide as an Aperio SVS or a generic tiled pyramidal TIFF, tile by tile.

    ``kind="aperio"`` lays the file out as Aperio's scanners do: level 0 (tiled) with an
    ImageDescription starting ``Aperio Image Library`` and carrying ``AppMag`` and ``MPP``, a
    stripped thumbnail as the second image, the reduced levels (tiled, marked as full images, as
    Aperio marks them), then a label and a macro image (with ``associated``). OpenSlide opens it
    as vendor ``aperio`` whatever its name; glmed's :func:`~glmed.io.open_image` picks OpenSlide
    for it when the name ends in ``.svs``. ``kind="tiff"`` writes level 0 and reduced-resolution
    pages only, with the µm/px as TIFF resolution (per centimetre), which OpenSlide reads as
    vendor ``generic-tiff``. Either way OpenSlide reports ``openslide.mpp-x`` = ``mpp``.

    Memory stays at one tile, the scene's small field and the thumbnail, whatever ``size``; the
    file appears only once complete.

    Args:
        path: the file to write (``.svs`` for Aperio by convention, ``.tif`` otherwise).
        size: ``(height, width)`` at level 0.
        seed: the scene is drawn from it (:func:`make_tissue_scene`).
        tissue_fraction: roughly how much of the slide is tissue, in ``[0, 1)``.
        pieces: number of tissue pieces.
        mpp: microns per level-0 pixel (0.25 is a 40x scan, 0.5 a 20x one).
        kind: ``"aperio"`` or ``"tiff"``.
        tile: tile side, a multiple of 16.
        levels: pyramid levels; by default until the smallest fits in one tile.
        step: size ratio between levels; 4 for Aperio (as its scanners write), 2 otherwise.
        compression: ``"jpeg"`` (as real slides; lossy), ``"zlib"`` or ``"lzw"`` (lossless), or None.
        quality: JPEG quality, 1 to 100.
        associated: for Aperio, also write the label and macro images.
        progress: show a progress bar over the tiles.

    Returns:
        What was written, with the scene to render the expected pixels from.

    Raises:
        ValueError: naming ``path``, on a bad kind, size, tile side, compression or resolution.
    """
    import tifffile

    path = Path(path)
    if kind not in KINDS:
        raise ValueError(f"{path}: unknown slide kind {kind!r}; choose one of {KINDS}")
    if compression not in COMPRESSIONS:
        raise ValueError(f"{path}: unknown compression {compression!r}; choose one of {COMPRESSIONS}")
    if not (math.isfinite(mpp) and mpp > 0):
        raise ValueError(f"{path}: mpp (microns per pixel) must be positive, got {mpp}")
    if not 1 <= quality <= 100:
        raise ValueError(f"{path}: JPEG quality must be in [1, 100], got {quality}")
    if not path.parent.is_dir():
        raise ValueError(f"{path}: the folder {path.parent} does not exist")
    check_tile(path, tile)
    step = step if step is not None else (4 if kind == "aperio" else 2)
    if step < 2:
        raise ValueError(f"{path}: levels must shrink by a step of at least 2, got {step}")
    try:
        scene = make_tissue_scene(size, seed, tissue_fraction, pieces)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error
    if levels is None:
        levels = 1
        while max(scene.level_sizes(levels, step)[-1]) > tile:
            levels += 1
    if levels < 1:
        raise ValueError(f"{path}: levels must be at least 1, got {levels}")
    level_sizes = scene.level_sizes(levels, step)
    if min(level_sizes[-1]) < 1:
        raise ValueError(f"{path}: {levels} levels shrink {tuple(size)} below one pixel")

    height, width = level_sizes[0]
    codec: dict[str, Any] = {"compression": compression}
    if compression == "jpeg":
        codec["compressionargs"] = {"level": quality}
    aperio = _AperioText(path, (height, width), tile, mpp, compression, quality)
    bar = None
    if progress:
        from glmed.progress import progress_bar

        total = sum(-(-h // tile) * -(-w // tile) for h, w in level_sizes)
        bar = progress_bar(total=total, desc=f"writing {path.name}", unit="tile", leave=False)
    tissue_pixels = [0]
    try:
        with atomic_path(path) as temporary, tifffile.TiffWriter(temporary, bigtiff=height * width * 3 > 2**31) as out:
            for level, (lh, lw) in enumerate(level_sizes):
                downsample = (height / lh, width / lw)
                if kind == "aperio":  # Aperio marks reduced levels as full images (NewSubfileType 0)
                    layout = dict(description=aperio.level(level, (lh, lw)), subfiletype=0)
                else:
                    resolution = (1e4 / (downsample[1] * mpp), 1e4 / (downsample[0] * mpp))
                    layout = dict(resolution=resolution, resolutionunit="CENTIMETER", subfiletype=1 if level else 0)
                tiles = _level_tiles(scene, (lh, lw), downsample, tile, bar, tissue_pixels if level == 0 else None)
                out.write(tiles, shape=(lh, lw, 3), dtype=np.uint8, tile=(tile, tile), photometric="rgb",
                          metadata=None, **codec, **layout)
                if kind == "aperio" and level == 0:  # the thumbnail comes second, stripped
                    thumbnail = _overview(scene, 1024)
                    out.write(thumbnail, photometric="rgb", rowsperstrip=16, metadata=None,
                              description=aperio.level(1, thumbnail.shape[:2]), **codec)
            if kind == "aperio" and associated:
                label = np.full((200, 240, 3), 245, np.uint8)
                label[60:140, 30:210] = 20  # a barcode-like dark block
                macro = _overview(scene, 512)
                for name, image, subfiletype, compressed in (("label", label, 1, "lzw"), ("macro", macro, 9, "jpeg")):
                    out.write(image, photometric="rgb", compression=compressed, rowsperstrip=16, metadata=None,
                              subfiletype=subfiletype, description=aperio.associated(name, image.shape[:2]))
    finally:
        if bar is not None:
            bar.close()
    fraction = tissue_pixels[0] / (height * width)
    return SyntheticSlide(path, kind, VENDORS[kind], scene, level_sizes, float(mpp), fraction)


@dataclass(frozen=True)
class _AperioText:
    """The ImageDescription texts of an Aperio SVS.

    Level 0's carries the fields OpenSlide turns into ``aperio.*`` properties (``AppMag`` into
    ``openslide.objective-power``, ``MPP`` into ``openslide.mpp-x`` and ``-y``), ``|``-separated
    after a first line naming the library and a second giving the size and tiling.
    """

    path: Path
    size: Size
    tile: int
    mpp: float
    compression: str | None
    quality: int

    HEAD = "Aperio Image Library v12.0.16"

    def level(self, level: int, size: tuple[int, ...]) -> str:
        """Level 0's description, or a reduced image's (``W x H -> w x h``)."""
        height, width = self.size
        codec = "JPEG" if self.compression == "jpeg" else (self.compression or "none").upper()
        where = f"[0,0 {width}x{height}]" if level == 0 else f"-> {size[1]}x{size[0]} -"
        # tifffile writes 7-bit ASCII only, and '|' would split a field in two
        stem = self.path.stem.encode("ascii", "replace").decode().replace("|", "_")
        fields = f"AppMag = {10.0 / self.mpp:.6g}|MPP = {self.mpp:.6g}|Filename = {stem}|ScanScope ID = GLMED"
        tiling = f"({self.tile}x{self.tile}) {codec}/RGB Q={self.quality}"
        return f"{self.HEAD}\r\n{width}x{height} {where} {tiling}|{fields}"

    def associated(self, name: str, size: tuple[int, ...]) -> str:
        """A label's or macro's description: OpenSlide names the image by the second line's first word."""
        return f"{self.HEAD}\r\n{name} {size[1]}x{size[0]}"


def _level_tiles(
    scene: TissueScene,
    size: Size,
    downsample: tuple[float, float],
    tile: int,
    bar: Any,
    tissue_pixels: list[int] | None,
) -> Iterator[np.ndarray]:
    """A level's tiles in row-major order, each rendered on demand (edge tiles clipped to the level)."""
    for row in range(0, size[0], tile):
        for col in range(0, size[1], tile):
            box = (row, col, min(row + tile, size[0]), min(col + tile, size[1]))
            pixels, tissue = scene._render(*scene._grid(box, downsample))
            if tissue_pixels is not None:
                tissue_pixels[0] += int(tissue.sum())
            if bar is not None:
                bar.update()  # before yielding: the writer does not come back after a level's last tile
            yield pixels


def _overview(scene: TissueScene, longest: int) -> np.ndarray:
    """The whole scene rendered at most ``longest`` pixels on its longer side."""
    scale = max(1.0, max(scene.size) / longest)
    view = (max(1, round(scene.size[0] / scale)), max(1, round(scene.size[1] / scale)))
    return scene.render((0, 0, *view), (scene.size[0] / view[0], scene.size[1] / view[1]))
