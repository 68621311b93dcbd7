"""Whole-slide inference that streams: a slide of any size in, a tiled pyramidal TIFF mask out.

The global branch sees a view built from the slide's coarsest sufficient pyramid level; patches
are read region by region, a batch at a time; their outputs are averaged, each part as soon as
it is final (:class:`~glmed.inference.merging.RowBandMerger`), into a scratch mask memory-mapped
from a file beside the output (one byte per pixel, on disk); that mask is then written tile by
tile as a pyramidal TIFF and moved into place in one step. Host memory grows with the slide's
width only through the overlap of two rows of patches, never with its area; no full-size array
is ever held in memory.

A run can resume. The scratch mask and a small ledger of the rows finished in each region (the
whole slide, or each coarse-to-fine box) stay beside the output when a run stops early; the same
call again, with the same model, slide and settings, recomputes the global pass (and, for
bidirectional models, the collect pass) and then only the patches of unfinished rows. Both files
are removed once the TIFF is in place.

Resident memory as the OS reports it would also count every page of the scratch file the run
touched (3.6 GB for a 60k×60k slide): file-backed, written back and reclaimable, but alarming. So
while the scratch mask is open its pages are dropped from the process's resident set every
:data:`RELEASE_EVERY_S` seconds (``madvise(MADV_DONTNEED)``, which for a shared file mapping loses
nothing: dirty pages stay in the page cache and reach the file), and the passes that read the whole
mask afterwards (its pyramid levels, the pixel counts) release what they read band by band
(:mod:`glmed.io.mapped`); the resident size then stays flat whatever the slide's area. The same
thread hands the C heap's free pages back to the OS (:mod:`glmed.inference.heap`): without it the
heap's resident size crept up with the run's length (a batch's activations freed between smaller
pieces that live on).

On a slide in colour the tissue is found first (:func:`glmed.io.tissue.detect_tissue`) and patches
of glass only are never read and are written as background (:mod:`glmed.inference.glass`), so the
time grows with the tissue's area rather than the slide's.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glmed.conventions import Box, Size
from glmed.data.normalize import DEFAULT_NORMALIZATION, Normalization
from glmed.inference.execution import DEFAULT_AMP, DEFAULT_CHANNELS_LAST
from glmed.inference.heap import release_free_heap
from glmed.inference.inferer import GlobalLocalInferer
from glmed.inference.merging import label_dtype
from glmed.inference.refinement import DEFAULT_MARGIN, DEFAULT_REFINE
from glmed.inference.slide_outputs import (
    GEOJSON_SUFFIXES,
    check_output_path,
    class_pixel_counts,
    write_mask_geojson,
    write_outline_thumbnail,
)
from glmed.inference.working_resolution import check_mpp, working_view
from glmed.io.base import ImageReader
from glmed.io.mapped import release_pages
from glmed.io.mask_tiff import MaskEncoding, mask_encoding, write_mask_tiff, write_probability_tiff
from glmed.io.open import ImageLike, open_as_reader
from glmed.io.resolution import microns_per_pixel
from glmed.io.tissue import TissueMask, detect_tissue
from glmed.io.writers import atomic_path, check_tile
from glmed.models.ensemble import ensemble
from glmed.models.glnet import GLNet
from glmed.models.placement import Placement

__all__ = ["SlidePrediction", "predict_to_tiff"]

RELEASE_EVERY_S = 1.0
"""How often an open scratch mask's pages leave the process's resident set (:meth:`ScratchMask.release`)."""


@dataclass
class SlidePrediction:
    """What :func:`predict_to_tiff` wrote and did.

    Attributes:
        path: the pyramidal TIFF holding the ``H×W`` class-index mask (level 0 at the working resolution).
        size: ``(height, width)`` of the slide's level 0.
        boxes: regions refined at full resolution by coarse-to-fine models (end-exclusive).
        patches: full-resolution patches the local branch processed.
        notes: plain-language remarks about this prediction.
        patches_skipped: patches on tissue that took the global branch's answer (``refine="uncertain"``).
        mpp: ``(rows, cols)`` µm per level-0 pixel of the slide (carried into the mask TIFF), or None.
        class_pixels: level-0 pixels of each class in the mask, by class index.
        thumbnail: the outline thumbnail PNG written, or None.
        geojson: the GeoJSON of the predicted regions written, or None.
        tissue: where the tissue is on the slide (:func:`glmed.io.tissue.detect_tissue`), or None when
            not detected (``tissue=False``, or an image without colour).
        patches_glass: patches without tissue, never read at full resolution and written as
            background. ``patches + patches_skipped + patches_glass`` is every patch computed.
        mask_size: ``(height, width)`` of the mask: the slide's at the working resolution (``size``
            when segmented at level 0).
        mask_mpp: ``(rows, cols)`` µm per mask pixel (carried into the mask TIFF), or None.
        probabilities: the probability pyramid written, or None.
    """

    path: Path
    size: Size
    boxes: list[Box] = field(default_factory=list)
    patches: int = 0
    notes: list[str] = field(default_factory=list)
    patches_skipped: int = 0
    mpp: tuple[float, float] | None = None
    class_pixels: list[int] = field(default_factory=list)
    thumbnail: Path | None = None
    geojson: Path | None = None
    tissue: TissueMask | None = None
    mask_size: Size | None = None
    mask_mpp: tuple[float, float] | None = None
    probabilities: Path | None = None
    patches_glass: int = 0

    @property
    def foreground_px(self) -> int:
        """Slide level-0 pixels of every class but the background (class 0): mask pixels scaled to level 0."""
        pixels = sum(self.class_pixels[1:])
        if self.mask_size is None or tuple(self.mask_size) == tuple(self.size):
            return int(pixels)
        return round(pixels * self.size[0] * self.size[1] / (self.mask_size[0] * self.mask_size[1]))

    @property
    def foreground_um2(self) -> float | None:
        """The foreground's area in µm², or None when the slide's µm/px is unknown."""
        if self.mask_mpp is None:
            return None if self.mpp is None else self.foreground_px * self.mpp[0] * self.mpp[1]
        return sum(self.class_pixels[1:]) * self.mask_mpp[0] * self.mask_mpp[1]


def predict_to_tiff(
    model: GLNet | Sequence[GLNet],
    image: ImageLike,
    path: str | os.PathLike,
    *,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    normalization: Normalization = DEFAULT_NORMALIZATION,
    progress: bool = False,
    tile: int = 512,
    compression: str | None = "zlib",
    resume: bool = True,
    overlap: int | None = None,
    target_ratio: float | None = None,
    per_component: bool | None = None,
    min_component: float | None = None,
    grow_boxes: int | None = None,
    amp: str | None = None,
    channels_last: bool = DEFAULT_CHANNELS_LAST,
    refine: str = DEFAULT_REFINE,
    margin: float | None = DEFAULT_MARGIN,
    max_memory: str | int | float | None = None,
    tta: str | None = None,
    reuse_encoder: bool | None = None,
    classes: Sequence[str] | None = None,
    thumbnail: str | os.PathLike | None = None,
    geojson: str | os.PathLike | None = None,
    tissue: bool | None = None,
    mpp: float | None = None,
    probabilities: str | os.PathLike | None = None,
) -> SlidePrediction:
    """Segment a whole slide (or any image) and write the mask as a tiled pyramidal TIFF.

    Args:
        model: a GLNet or CoarseToFineGLNet, or several of one architecture averaged, as for
            :func:`glmed.predict`. An ensemble streams like one model (each patch's probabilities
            are averaged over the models before they are merged), and its resume identity covers
            every model's weights.
        image: a slide path (any format glmed reads: SVS, NDPI, pyramidal TIFF, ...), an open
            reader or an array.
        path: the ``.tif`` to write; it appears only once complete. Its values are what a viewer
            shows (:mod:`glmed.io.mask_tiff`): 0/255 for a two-class model, class indices with a
            colour map for more; level 0's ImageDescription is JSON naming the classes, the stored
            values, the slide's level-0 size and µm/px, which the resolution tags carry too. Its
            levels halve the size (nearest neighbour) until one tile holds the smallest, so slide
            viewers and :func:`glmed.open_image` read it at any zoom.
        batch_size: patches per forward pass; bounds device memory. 4 by default; with
            ``max_memory``, the most it may choose.
        device: where to run; the model's device by default.
        normalization: pixel scaling, as in training.
        progress: show progress bars over the patch passes.
        tile: TIFF tile side (a multiple of 16).
        compression: ``"zlib"`` (lossless, default), ``"lzw"`` or ``None``; never JPEG, which
            would alter class indices.
        resume: continue an interrupted run for the same output when the model, the slide file
            and these settings are unchanged (slides given as paths only); False starts afresh.
        overlap: minimum overlap between patches for this prediction, as for :func:`glmed.predict`.
        target_ratio: coarse-to-fine's foreground : background in a box, as for :func:`glmed.predict`.
        per_component: coarse-to-fine's box per connected component, as for :func:`glmed.predict`.
        min_component: coarse-to-fine's smallest region given a box, as for :func:`glmed.predict`.
        grow_boxes: coarse-to-fine's rounds of box growth, as for :func:`glmed.predict`; each round's
            decision is kept in the run's ledger before its grown boxes are written, so a resumed
            run grows the boxes it grew before.
        amp: ``"bf16"`` for bfloat16 autocast of the forward passes, as for :func:`glmed.predict`.
        channels_last: channels-last weights and inputs for the call, as for :func:`glmed.predict`.
            Both change the mask's last bits, so a run resumes only with the settings it began with.
        refine: ``"uncertain"`` runs the local branch only where the global branch is unsure, as
            for :func:`glmed.predict`; ``"box"`` (default) on every patch.
        margin: how unsure the global branch may be and still be trusted, as for :func:`glmed.predict`.
            Both are part of what a run resumes with.
        max_memory: a budget for the peak memory (``"1GB"``, ``"512MB"``, ``"1.5GiB"``, bytes), as for
            :func:`glmed.predict`: the batch size (and, where float32 cannot fit and the device
            runs bfloat16 natively, bf16) is chosen for it before the scratch mask is opened, and
            the run's resume identity records the batch and autocast chosen, not the budget: a
            run resumes when the budget gives the batch it began with, and starts afresh when it
            gives another (a batch's shape can change the mask's last bits). The mask, on disk,
            does not count against a CPU budget.
        tta: test-time augmentation, as for :func:`glmed.predict`: ``"dihedral"`` (the slide's 4
            rotations and 4 reflections, ×8 compute: slides have no up) or ``"flips"`` (×3). Each
            patch's probabilities are averaged over the views before they are merged, so the mask
            still streams a band of rows at a time and a run resumes; a run resumes only with the
            ``tta`` it began with.
        reuse_encoder: bidirectional models: the final pass takes each patch's encoder maps from
            the collect pass, as for :func:`glmed.predict` (the same mask, so a run resumes with or
            without it). With ``max_memory`` unset it holds the maps of every refined patch of the
            slide (or of a coarse-to-fine box) between the passes: for a slide, give a budget.
        classes: a name per class, background first, for the TIFF's metadata and the GeoJSON;
            ``("background", "foreground")`` for two classes, ``"class N"`` otherwise.
        thumbnail: a ``.png`` to write too: the slide's overview, at most
            :data:`~glmed.inference.slide_outputs.DEFAULT_THUMBNAIL_SIDE` pixels a side, with the
            predicted regions outlined in their class colours.
        geojson: a ``.geojson`` to write too: the predicted regions as QuPath annotations in level-0
            pixel coordinates, from a downsampled level of the mask
            (:func:`~glmed.inference.slide_outputs.write_mask_geojson`), with µm² areas when the
            slide's µm/px is known.
        tissue: find the tissue on the slide first (Otsu on saturation of a 2048-pixel view,
            :func:`glmed.io.tissue.detect_tissue`) and segment only where it is: a patch without any
            tissue is never read at full resolution nor run through the local branch, and is written
            as background (class 0); ``result.patches_glass`` counts them and ``result.notes`` says
            so. A coarse-to-fine model's foreground is kept to tissue and its boxes are cut to the
            pieces of tissue they cover (:mod:`glmed.inference.glass`). The mask found is
            ``result.tissue`` (its area goes into the folder summary). Colour images only (grey
            ones are segmented whole), and part of what a run resumes with. False segments every
            patch: for colour images that are not slides of tissue on glass (dermoscopy, aerial
            photographs), where saturation does not separate foreground from empty background.
            With ``mpp``, tissue is found on the slide and its mask scaled to the working resolution.
            None (default): on for slides, taken to be the images that say their µm/px (whole-slide
            formats do; photographs do not), off otherwise with a note for colour images; True
            or False forces it.
        mpp: the µm per pixel to segment at (0.5 for 20x), the **working resolution**: patches and
            the global view are read from the slide's pyramid level nearest it (the coarsest not
            coarser) and resampled to it (:mod:`glmed.inference.working_resolution`). By default, the
            model's ``trained_mpp`` (recorded by training) when the slide says its own µm/px, else
            level 0 as it is. The mask is written at the working resolution (fewer pixels than the
            slide for a coarser one); its metadata records its µm/px and the slide's level-0 size
            and µm/px, the GeoJSON stays in the slide's level-0 pixels with µm² areas, and the
            thumbnail is the slide's. A working resolution more than 1.5x from the model's training
            gets a note. Part of what a run resumes with.
        probabilities: a ``.tif`` to write too: how sure the mask is, as a greyscale uint8 pyramid
            the size of the mask (:func:`~glmed.io.mask_tiff.write_probability_tiff`): 0 to 255 for
            the foreground's probability 0 to 1 with two classes, the winning class's with more.
            The averaged patch probabilities are written band by band beside the mask's scratch
            file (one more byte per pixel on disk), so it streams and resumes as the mask does;
            outside coarse-to-fine's boxes, background by rule, it is 0 (two classes) or 255.

    There is no ``finish`` here, unlike :func:`glmed.predict`: ISIC finishing keeps one
    connected region without holes, which would erase all but one of a slide's many regions
    (tissue, tumour foci, glands); it is meant for one lesion per image.

    Raises:
        ValueError: a lossy compression, a bad tile side, a ``refine``/``margin`` out of range (or
            ``refine="uncertain"`` for a ``local_only`` model), a ``path`` that is a folder, does not
            end in ``.tif``/``.tiff``, or whose folder does not exist (all checked before any inference),
            or a ``max_memory`` that cannot be read or is below the estimate at batch 1 (checked
            before any patch is read), bad ``classes``, or a ``thumbnail``/``geojson`` name that is not a
            ``.png``/``.geojson`` in an existing folder, a ``probabilities`` name that is not a ``.tif`` in
            an existing folder or is ``path`` itself (checked before any inference), an ``mpp`` that
            is not a positive number, or an ``mpp`` for a slide that does not say its µm/px (naming it).
    """
    if compression not in ("zlib", "lzw", None):
        raise ValueError(f"{path}: masks need lossless compression: 'zlib', 'lzw' or None, got {compression!r}")
    path = Path(path)
    if not path.parent.is_dir():
        raise ValueError(f"{path}: the folder {path.parent} does not exist")
    if path.is_dir():
        raise ValueError(f"{path}: is a folder; name the .tif file to write")
    if path.suffix.lower() not in (".tif", ".tiff"):
        raise ValueError(f"{path}: predict_to_tiff writes a pyramidal TIFF, so the name must end in .tif or .tiff "
                         "(for a PNG, use glmed.predict and glmed.io.writers.write_mask_png)")
    check_tile(path, tile)  # now, not after hours of inference
    model = ensemble(model)
    encoding, extras = _output_plan(model, classes, thumbnail, geojson)
    check_mpp(mpp)
    probability_path = _probability_path(probabilities, path)
    inferer = GlobalLocalInferer(batch_size=batch_size, device=device, normalization=normalization, progress=progress,
                                 amp=amp, channels_last=channels_last, refine=refine, margin=margin, overlap=overlap,
                                 target_ratio=target_ratio, per_component=per_component, min_component=min_component,
                                 grow_boxes=grow_boxes, max_memory=max_memory, tta=tta, reuse_encoder=reuse_encoder)
    inferer.config_for(model)  # bad settings fail before the slide is opened
    reader, opened = open_as_reader(image)
    size = (int(reader.size[0]), int(reader.size[1]))  # read now: a closed OpenSlide handle answers nothing
    channels = reader.channels
    try:
        view = working_view(reader, mpp, model.config.trained_mpp)  # the slide at the working resolution
        work, slide_mpp, mask_mpp = view.reader, microns_per_pixel(reader), microns_per_pixel(view.reader)
        find_tissue = tissue if tissue is not None else slide_mpp is not None
        found = _tissue(reader) if find_tissue else None  # before inference, which skips glass with it
        skip = None if found is None else _at_working_resolution(found, work.size, mask_mpp)
        # The batch (and autocast) a budget allows, fixed before the identity records them.
        inferer, plan = inferer.fitted(model, work.size, out_in_memory=False, with_coarse=False)
        identity = None
        if resume and isinstance(image, (str, os.PathLike)):
            identity = _run_identity(model, Path(image), work, inferer, view.target, probability_path is not None,
                                     skip)
        with ScratchMask(path, work.size, label_dtype(model.config.num_classes), identity,
                         probabilities=probability_path is not None) as scratch:
            result = inferer(model, work, out=scratch.mask, with_coarse=False, ledger=scratch,
                             probabilities=scratch.probabilities, tissue=skip)
            where: dict[str, Any] = {"mpp": mask_mpp, "source": os.path.basename(reader.name), "slide_size": size,
                                     "slide_mpp": slide_mpp, "tile": tile, "compression": compression,
                                     "progress": progress}
            write_mask_tiff(path, scratch.mask, encoding, **where)
            if probability_path is not None and scratch.probabilities is not None:
                write_probability_tiff(probability_path, scratch.probabilities, encoding.classes, **where)
            class_pixels = class_pixel_counts(scratch.mask, len(encoding.classes)).tolist()
            scratch.finished = True
        mask_size = (int(work.size[0]), int(work.size[1]))  # now: a closed OpenSlide handle answers nothing
        _write_extras(reader, path, encoding, extras)
    finally:
        if opened:
            reader.close()
    notes = ([plan.note] if plan is not None else []) + view.notes + list(result.notes)
    if tissue is None and not find_tissue and channels in (3, 4):
        notes.append("no tissue mask: the image does not say its µm/px, so it was not taken for a slide of tissue "
                     "on glass and every patch was segmented; tissue=True (--tissue-mask) skips glass anyway")
    if scratch.resumed:
        notes.append(f"resumed an interrupted run: {scratch.rows_resumed} rows were already written")
    return SlidePrediction(path, size, result.boxes, result.patches, notes, result.patches_skipped, mpp=slide_mpp,
                           class_pixels=class_pixels, tissue=found, mask_size=mask_size, mask_mpp=mask_mpp,
                           probabilities=probability_path,
                           patches_glass=result.patches_glass, **extras)


def _probability_path(probabilities: str | os.PathLike | None, mask: Path) -> Path | None:
    """Where the probability pyramid goes, checked before any inference; None when not asked for."""
    if probabilities is None:
        return None
    where = check_output_path(probabilities, (".tif", ".tiff"), "probability pyramid")
    if where.resolve() == mask.resolve():
        raise ValueError(f"{where}: the probability pyramid needs a name of its own, not the mask's")
    return where


def _at_working_resolution(found: TissueMask, size: Size, mpp: tuple[float, float] | None) -> TissueMask:
    """The slide's tissue in the working reader's pixels.

    The same mask over the same slide; only the pixel size it maps to changes (``size`` is the
    slide's size at the working resolution).
    """
    if tuple(size) == tuple(found.image_size):
        return found
    mask = found.mask
    rows, cols = -(-mask.shape[0] // size[0]), -(-mask.shape[1] // size[1])
    if rows > 1 or cols > 1:  # a working resolution coarser than the mask: pool it, tissue wherever any was
        padded = np.zeros((-(-mask.shape[0] // rows) * rows, -(-mask.shape[1] // cols) * cols), dtype=bool)
        padded[: mask.shape[0], : mask.shape[1]] = mask
        mask = np.asarray(padded.reshape(padded.shape[0] // rows, rows, padded.shape[1] // cols, cols).any(axis=(1, 3)))
    return replace(found, mask=mask, image_size=(int(size[0]), int(size[1])),
                   mpp=None if mpp is None else sum(mpp) / 2)


def _tissue(reader: ImageReader) -> TissueMask | None:
    """The slide's tissue, or None for an image without colour (saturation needs RGB)."""
    if reader.channels not in (3, 4):
        return None
    return detect_tissue(reader)


def _output_plan(
    model: GLNet, classes: Sequence[str] | None, thumbnail: str | os.PathLike | None,
    geojson: str | os.PathLike | None,
) -> tuple[MaskEncoding, dict[str, Path | None]]:
    """How the mask is stored and which extra files to write, checked before any inference."""
    encoding = mask_encoding(model.config.num_classes, classes)
    extras = {
        "thumbnail": None if thumbnail is None else check_output_path(thumbnail, (".png",), "thumbnail"),
        "geojson": None if geojson is None else check_output_path(geojson, GEOJSON_SUFFIXES, "GeoJSON"),
    }
    return encoding, extras


def _write_extras(reader: ImageReader, mask: Path, encoding: MaskEncoding, extras: dict[str, Path | None]) -> None:
    """The thumbnail and GeoJSON asked for, from the mask TIFF just written.

    Both are the slide's: the thumbnail its overview, the GeoJSON in its level-0 pixels (the mask's
    metadata records the slide's size and µm/px, whatever resolution the mask was made at).
    """
    if extras["thumbnail"] is not None:
        write_outline_thumbnail(reader, mask, extras["thumbnail"], encoding)
    if extras["geojson"] is not None:
        write_mask_geojson(mask, extras["geojson"], encoding.classes)


class ScratchMask:
    """The ``H×W`` mask memory-mapped from ``.NAME.partial`` beside the output, with a ledger of rows done.

    The ledger of finished rows per region is kept in ``.NAME.partial.json`` (a
    :class:`~glmed.inference.resume.RowLedger`).

    With an ``identity`` (what the result depends on) an earlier run's files with the same
    identity are reopened and kept if this run stops early; without one the run starts afresh
    and leaves nothing behind. The file's space is reserved up front, so a full disk is an error
    here rather than a crash (SIGBUS) when a page of the mapping is first written.

    With ``probabilities``, a uint8 map of how sure the mask is (``.NAME.partial.probabilities``)
    is kept the same way, covered by the same ledger.
    """

    def __init__(
        self, target: Path, size: Size, dtype: np.dtype, identity: str | None, probabilities: bool = False
    ) -> None:
        self.size, self.dtype, self.identity = tuple(int(s) for s in size), np.dtype(dtype), identity
        self.mask_path = target.with_name(f".{target.name}.partial")
        self.ledger_path = target.with_name(f".{target.name}.partial.json")
        self.probabilities_path = target.with_name(f".{target.name}.partial.probabilities") if probabilities else None
        self.probabilities: np.ndarray | None = None
        self.finished = False
        self.rows_resumed = 0  # rows an earlier run had written, over all regions
        self._regions: dict[str, int] = {}
        self._decisions: dict[str, Any] = {}  # e.g. box growth's, made from pixels a later region overwrites

    @property
    def resumed(self) -> bool:
        return self.rows_resumed > 0

    def __enter__(self) -> ScratchMask:
        if self.identity is not None and self._load_ledger():
            self._map()
            self.rows_resumed = sum(self._regions.values())
        else:
            try:
                self._remove()
                self._reserve(self.mask_path, self.dtype.itemsize)
                if self.probabilities_path is not None:
                    self._reserve(self.probabilities_path, 1)
                self._map()
                self._save_ledger()
            except BaseException:
                self._remove()
                raise
        self._stop = threading.Event()
        self._releaser = threading.Thread(target=self._release_periodically, name="glmed-scratch-release",
                                          daemon=True)
        self._releaser.start()
        return self

    def _map(self) -> None:
        self.mask = np.memmap(self.mask_path, dtype=self.dtype, mode="r+", shape=self.size)
        if self.probabilities_path is not None:
            self.probabilities = np.memmap(self.probabilities_path, dtype=np.uint8, mode="r+", shape=self.size)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._releaser.join()
        del self.mask  # drop this mapping; POSIX removes files that are still mapped elsewhere
        self.probabilities = None
        if self.finished or self.identity is None:
            self._remove()

    def release(self) -> None:
        """Drop the scratch files' pages from this process's resident set; the data stays in the page cache and file.

        ``madvise(MADV_DONTNEED)`` on a shared file mapping unmaps pages only: a dirty page keeps
        its data in the page cache (written back as usual), and the next access maps it again. A
        no-op where the platform lacks it.
        """
        for scratch in (self.mask, self.probabilities):
            release_pages(scratch)

    def _release_periodically(self) -> None:
        """Every :data:`RELEASE_EVERY_S` seconds: the scratch pages, then the C heap's free pages (:mod:`.heap`)."""
        while not self._stop.wait(RELEASE_EVERY_S):
            self.release()
            release_free_heap()

    def rows_done(self, region: Box) -> int:
        return self._regions.get(_key(region), 0)

    def recall(self, key: str) -> Any | None:
        """A decision an earlier run of this identity remembered (box growth's, for one)."""
        return self._decisions.get(key)

    def remember(self, key: str, value: Any) -> None:
        """Keep a decision (JSON-friendly) in the ledger, on disk before returning."""
        self._decisions[key] = value
        self._save_ledger()

    def record(self, region: Box, rows: int) -> None:
        self.mask.flush()  # the ledger never claims rows that are not on disk
        if isinstance(self.probabilities, np.memmap):
            self.probabilities.flush()
        self._regions[_key(region)] = rows
        self._save_ledger()

    def _load_ledger(self) -> bool:
        """Take an earlier run's progress if its files are complete and its identity is ours."""
        try:
            ledger = json.loads(self.ledger_path.read_text())
            fits = self.mask_path.stat().st_size == self.size[0] * self.size[1] * self.dtype.itemsize
            if self.probabilities_path is not None:
                fits = fits and self.probabilities_path.stat().st_size == self.size[0] * self.size[1]
        except (OSError, ValueError):
            return False
        if not fits or not isinstance(ledger, dict) or ledger.get("identity") != self.identity:
            return False
        self._regions = {str(k): int(v) for k, v in ledger.get("regions", {}).items()}
        self._decisions = dict(ledger.get("decisions", {}))
        return True

    def _save_ledger(self) -> None:
        if self.identity is None:
            return
        with atomic_path(self.ledger_path) as temporary:
            record: dict[str, Any] = {"identity": self.identity, "regions": self._regions}
            if self._decisions:
                record["decisions"] = self._decisions
            Path(temporary).write_text(json.dumps(record))

    def _reserve(self, path: Path, itemsize: int) -> None:
        nbytes = self.size[0] * self.size[1] * itemsize
        try:
            with open(path, "wb") as handle:
                if hasattr(os, "posix_fallocate"):
                    os.posix_fallocate(handle.fileno(), 0, nbytes)
                else:
                    handle.truncate(nbytes)
        except OSError as error:
            raise OSError(f"{path}: cannot reserve {nbytes / 2**30:.2f} GiB of scratch space for the "
                          f"mask ({error.strerror or error})") from error

    def _remove(self) -> None:
        for file in (self.mask_path, self.ledger_path, self.probabilities_path):
            if file is not None:
                file.unlink(missing_ok=True)


def _key(region: Box) -> str:
    return ",".join(str(int(v)) for v in region)


def _run_identity(
    model: GLNet, slide: Path, reader: ImageReader, inferer: GlobalLocalInferer, mpp: float | None = None,
    probabilities: bool = False, tissue: TissueMask | None = None,
) -> str:
    """A digest of everything the mask depends on.

    Weights, config, slide file, settings, working µm/px and the tissue skipped.
    """
    digest = hashlib.sha256()
    stat = slide.stat()
    placement = Placement.of(model, inferer.device)
    # trained_image_size only feeds notes, never the mask: a reloaded or older checkpoint resumes too;
    # trained_mpp counts through the working µm/px it gives (``mpp``), not as a field
    config = replace(inferer.config_for(model), trained_image_size=None).to_dict()
    for name, off in (("min_component", 0), ("grow_boxes", 0)):  # newer box settings, named only when used,
        if config.get(name) == off:                             # so runs begun before them still resume
            config.pop(name)
    config.pop("trained_mpp", None)
    settings = {
        "model": type(model).__name__,
        "config": config,
        "slide": str(slide.resolve()),
        "bytes": stat.st_size,
        "modified_ns": stat.st_mtime_ns,
        "size": list(reader.size),
        "batch_size": inferer.batch_size,
        "normalization": repr(inferer.normalization),
        "device": placement.device.type,
        "dtype": str(placement.dtype),
    }
    # Named only when not the default, so runs begun before these options existed still resume.
    if inferer.amp != DEFAULT_AMP:
        settings["amp"] = inferer.amp
    if inferer.channels_last != DEFAULT_CHANNELS_LAST:
        settings["channels_last"] = inferer.channels_last
    if inferer.tta is not None:
        settings["tta"] = inferer.tta
    if mpp is not None:
        settings["mpp"] = mpp
    if probabilities:  # a run without them has no probabilities to resume
        settings["probabilities"] = True
    if inferer.refine != DEFAULT_REFINE:  # the margin counts only where patches may be skipped
        settings["refine"] = inferer.refine
        settings["margin"] = inferer.margin
    if tissue is not None:  # which patches are glass: a run resumes only with the same ones skipped
        settings["tissue"] = tissue.digest()
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
