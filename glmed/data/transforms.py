"""MONAI transforms that turn a loaded image and its label into a GLNet sample.

They follow MONAI's conventions, so they sit in ``monai.transforms.Compose`` beside
``LoadImaged``, ``EnsureChannelFirstd``, ``RandFlipd``, ``RandRotate90d``...: an array
transform first and a dictionary wrapper (``MapTransform``) second; images are
channel-first ``C×H×W`` (``H×W`` rows and columns: load PNG/JPEG with
``LoadImaged(..., reader="PILReader", reverse_indexing=False)`` or MONAI transposes them);
random transforms draw once per sample and apply the draw to image and label alike.
:class:`GlobalLocald` also takes an :class:`~glmed.io.base.ImageReader` as the image (or
label), so a slide is read region by region instead of loaded.

A typical training pipeline (ISIC 2018, 0/255 masks)::

    Compose([
        LoadImaged(("image", "label"), reader="PILReader", reverse_indexing=False),
        EnsureChannelFirstd(("image", "label")),
        LabelToIndexd("label", values=(0, 255)),
        RandFlipd(("image", "label"), prob=0.5, spatial_axis=1),
        RandGlobalLocald(("image", "label"), num_patches=4, num_classes=2,
                         normalization=Normalization(max_value=255)),
    ])

``LoadImaged`` (and interpolating transforms such as ``RandAffined``) give float32 pixels of
0-255, so the scale is stated (``Normalization(max_value=255)``); glmed's own
:class:`ReadImaged` keeps the file's type, which the default normalisation reads by itself.

and a ``DataLoader(..., collate_fn=glmed.data.collate_global_local)``.

The random sample rules are not re-implemented here: :class:`RandStageSampled` calls the
trainer's own :class:`~glmed.data.stage_samples.StageSampler`, and
:class:`RandForegroundBoxd` and :class:`RandGlobalLocald` call the two rules it is made of
(:func:`~glmed.data.stage_samples.training_box`,
:func:`~glmed.data.stage_samples.choose_patches`), drawing from a ``Generator`` seeded by
the transform's MONAI random state (:func:`seed_from`), so ``set_random_state`` makes them
reproducible.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable, SpatialCrop, Transform
from monai.utils.type_conversion import convert_to_dst_type

from glmed.conventions import Size
from glmed.data.normalize import DEFAULT_NORMALIZATION, Normalization
from glmed.data.samples import check_class_map, global_local_sample, tile_box
from glmed.data.stage_samples import (
    StageSampler,
    StageView,
    choose_patches,
    training_box,
)
from glmed.geometry import patch_grid
from glmed.io.base import ImageReader
from glmed.models.glnet import GLNetConfig

Array = np.ndarray | torch.Tensor

_SEED_BOUND = np.iinfo(np.int64).max


def seed_from(random_state: np.random.RandomState) -> int:
    """One draw from a MONAI transform's random state, to seed a ``numpy.random.Generator``.

    The shared sample rules draw from a ``Generator`` (the trainer's kind) while MONAI gives
    each transform a ``RandomState`` (``self.R``); seeding one from the other keeps a
    transform reproducible under ``set_random_state`` and lets the very same rule run in
    both places.
    """
    return int(random_state.randint(_SEED_BOUND, dtype=np.int64))


def channels_last(image: Array | ImageReader) -> np.ndarray | ImageReader:
    """A channel-first ``C×H×W`` image as an ``H×W×C`` numpy view (readers pass through)."""
    if isinstance(image, ImageReader):
        return image
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.ndim != 3:
        raise ValueError(f"expected a channel-first C×H×W image, got shape {array.shape}")
    return np.moveaxis(array, 0, -1)


def _drop(data: dict[Hashable, Any], keys: Sequence[Hashable | None]) -> None:
    """Remove the full-resolution image and label: what a sample exists to avoid carrying."""
    for key in keys:
        data.pop(key, None)



# -- loading --------------------------------------------------------------------------


class ReadImaged(MapTransform):
    """Load an image and its mask with :func:`glmed.io.open_image`, mask as class indices.

    The glmed counterpart of ``LoadImaged`` + ``EnsureChannelFirstd`` + ``LabelToIndexd``:
    rows stay rows, pixels keep the file's dtype, and the mask is converted and validated
    as :func:`glmed.io.labels.mask_to_index` does for the dataset (``binary``: 0/255 or
    0/1 → 0/1, ISIC and Inria; ``deepglobe``: palette colours → 7 classes).

    Args:
        keys: image key, then optionally label key; the sample holds file paths there.
        label_kind: ``"binary"``, ``"deepglobe"``, or None for masks that already hold
            class indices.
        allow_missing_keys: allow samples without the label key.

    Puts ``C×H×W`` (image) and ``1×H×W`` uint8 (label) arrays under the same keys.
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "label"),
        label_kind: str | None = "binary",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if not 1 <= len(self.keys) <= 2:
            raise ValueError(f"keys must name the image and optionally the label, got {self.keys}")
        self.label_kind = label_kind

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Replace the file paths under the keys by the image (``C×H×W``) and its class map (``1×H×W``)."""
        from glmed.io import mask_to_index, open_image

        d = dict(data)
        for key in self.key_iterator(d):
            with open_image(d[key]) as reader:
                height, width = reader.size
                pixels = reader.read((0, 0, height, width))
            if key == self.keys[0]:
                d[key] = np.moveaxis(pixels, -1, 0)
            elif self.label_kind is None:
                d[key] = check_class_map(pixels, str(key))[None]
            else:
                d[key] = mask_to_index(pixels, self.label_kind, reader.name)[None]
        return d


# -- labels ---------------------------------------------------------------------------


class LabelToIndex(Transform):
    """Map mask values, or colours, to class indices: ``values[i]`` becomes class ``i``.

    ``values=(0, 255)`` turns an ISIC or Inria mask into 0/1; a tuple of RGB colours turns a
    colour-coded mask (DeepGlobe) into class indices. Any other value in the mask is an
    error, so a wrongly loaded mask never reaches the loss.

    Args:
        values: one number per class for a single-channel mask, or one colour (a tuple
            with one value per channel) per class for a ``C×H×W`` colour mask.
    """

    def __init__(self, values: Sequence[float | Sequence[float]]) -> None:
        table = np.asarray(values, dtype=np.float64)
        if table.ndim == 1:
            table = table[:, None]
        if table.ndim != 2 or len(table) == 0:
            raise ValueError(f"values must be numbers or equal-length colours, got {values!r}")
        if len({tuple(row) for row in table}) != len(table):
            raise ValueError(f"values must be distinct, got {values!r}")
        self.table = table
        self.values = np.asarray(values).tolist()  # as given, for messages

    def __call__(self, label: Array, key: Hashable = "label") -> Array:
        """``C×H×W`` or ``H×W`` mask → ``1×H×W`` int64 class map, same array type as ``label``."""
        array = label.detach().cpu().numpy() if isinstance(label, torch.Tensor) else np.asarray(label)
        if array.ndim == 2:
            array = array[None]
        if array.ndim != 3 or array.shape[0] != self.table.shape[1]:
            raise ValueError(
                f"{key!r}: expected a channel-first mask with {self.table.shape[1]} channel(s) for values "
                f"{self.table.tolist()}, got shape {array.shape}"
            )
        found = np.zeros(array.shape[1:], dtype=bool)
        out = np.zeros(array.shape[1:], dtype=np.int64)
        for index, value in enumerate(self.table):
            hit = np.all(array == value[:, None, None], axis=0)
            out[hit] = index
            found |= hit
        if not found.all():
            strays = np.unique(array.reshape(array.shape[0], -1)[:, ~found.reshape(-1)], axis=1).T[:5]
            shown = strays[:, 0] if strays.shape[1] == 1 else strays
            raise ValueError(f"{key!r} holds values {shown.tolist()} that are not among the class values {self.values}")
        return convert_to_dst_type(out[None], label, dtype=torch.int64 if isinstance(label, torch.Tensor) else None)[0]


class LabelToIndexd(MapTransform):
    """Dictionary wrapper of :class:`LabelToIndex`."""

    def __init__(
        self,
        keys: KeysCollection,
        values: Sequence[float | Sequence[float]],
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = LabelToIndex(values)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Replace each keyed mask by its ``1×H×W`` class map; other keys are left as they are."""
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key], key)
        return d


# -- the global-local sample ----------------------------------------------------------


class GlobalLocal(Transform):
    """One image (and label) → its global view and the full-resolution patches tiling it.

    The patches tile the whole image (:func:`glmed.geometry.patch_grid`: at least
    ``overlap`` pixels between neighbours, the last row/column flush with the border), or
    only a coarse-to-fine box when one is given (:func:`glmed.data.samples.tile_box`).

    Args:
        global_size: side, or ``(height, width)``, of the downsampled global view.
        patch_size: patch side, or ``(height, width)``, at full resolution.
        overlap: minimum overlap between neighbouring patches, in pixels.
        normalization: pixel scaling and standardisation; None only converts to float32.
        num_classes: when given, label values must lie in ``[0, num_classes)``.
        with_patches: read the patches' pixels; False gives boxes only.
    """

    def __init__(
        self,
        global_size: int | Size = 508,
        patch_size: int | Size = 508,
        overlap: int = 50,
        normalization: Normalization | None = DEFAULT_NORMALIZATION,
        num_classes: int | None = None,
        with_patches: bool = True,
    ) -> None:
        self.global_size = global_size
        self.patch_size = patch_size
        self.overlap = overlap
        self.normalization = normalization
        self.num_classes = num_classes
        self.with_patches = with_patches

    def boxes(self, image_size: Size, box: Sequence[int] | None = None) -> np.ndarray:
        """``N×4`` patch boxes for an image, inside ``box`` when given."""
        if box is None:
            return patch_grid(image_size, self.patch_size, self.overlap).boxes
        r0, c0, r1, c1 = (int(v) for v in np.asarray(box).reshape(-1))
        return tile_box(image_size, (r0, c0, r1, c1), self.patch_size, self.overlap).boxes

    def __call__(
        self,
        image: Array | ImageReader,
        label: Array | ImageReader | None = None,
        box: Sequence[int] | None = None,
        select: Callable[[int], np.ndarray] | None = None,
        label_key: Hashable = "label",
    ) -> dict[str, torch.Tensor]:
        """Build the sample.

        Args:
            image: ``C×H×W`` array or tensor, or a reader.
            label: ``1×H×W`` / ``H×W`` class map, or a single-channel reader.
            box: coarse-to-fine box ``(row0, col0, row1, col1)``; patches stay inside it.
            select: given the number of grid patches, the indices of those to use.
            label_key: the label's name, for error messages.

        Returns:
            See :func:`glmed.data.samples.global_local_sample`.
        """
        image = channels_last(image)
        if label is not None and not isinstance(label, ImageReader):
            label = check_class_map(label, str(label_key), self.num_classes)
        size = image.size if isinstance(image, ImageReader) else image.shape[:2]
        boxes = self.boxes((int(size[0]), int(size[1])), box)
        if select is not None:
            boxes = boxes[select(len(boxes))]
        return global_local_sample(
            image, boxes, label, self.global_size, self.normalization, self.num_classes, self.with_patches
        )


class GlobalLocald(MapTransform):
    """Dictionary wrapper of :class:`GlobalLocal`: every patch of the grid.

    ``keys`` names the image and, optionally, the label (``("image", "label")``; with
    ``allow_missing_keys`` a sample without a label passes, as at inference). Adds
    ``global_image`` (``C×g×g`` float32), ``boxes`` (``N×4`` int64, level-0 pixels),
    ``boxes_normalized`` (``N×4`` float64, fractions of the image), ``image_size`` (2,),
    ``patches`` (``N×C×p×p`` float32), and with a label ``global_label`` (``g×g`` int64,
    nearest neighbour) and ``patch_labels`` (``N×p×p`` int64). The full-resolution image and
    label are removed unless ``keep_source``: they are what the sample exists to avoid
    carrying around (and their sizes differ, so they would not collate).

    Args:
        keys: image key, then optionally label key.
        box_key: key of a coarse-to-fine box (:class:`RandForegroundBoxd`); patches are
            tiled inside it when the sample has it.
        keep_source: keep the image and label under their keys.
        allow_missing_keys: allow samples without the label key.
        Other arguments: see :class:`GlobalLocal`.
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "label"),
        global_size: int | Size = 508,
        patch_size: int | Size = 508,
        overlap: int = 50,
        normalization: Normalization | None = DEFAULT_NORMALIZATION,
        num_classes: int | None = None,
        with_patches: bool = True,
        box_key: str | None = None,
        keep_source: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if not 1 <= len(self.keys) <= 2:
            raise ValueError(f"keys must name the image and optionally the label, got {self.keys}")
        self.builder = GlobalLocal(global_size, patch_size, overlap, normalization, num_classes, with_patches)
        self.box_key = box_key
        self.keep_source = keep_source

    def select(self, count: int) -> np.ndarray:
        """Indices of the grid's ``count`` patches that go into the sample: all of them."""
        return np.arange(count)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Add the sample's keys (tiled inside the ``box_key`` box if any); drop the source unless ``keep_source``."""
        d = dict(data)
        image_key = self.keys[0]
        label_key = self.keys[1] if len(self.keys) == 2 else None
        if label_key is not None and label_key not in d and not self.allow_missing_keys:
            raise KeyError(f"sample has no label key {label_key!r} (set allow_missing_keys=True for unlabelled data)")
        label = d.get(label_key) if label_key is not None else None
        box = d.get(self.box_key) if self.box_key is not None else None
        d.update(self.builder(d[image_key], label, box, self.select, label_key))
        if not self.keep_source:
            _drop(d, (image_key, label_key))
        return d


class RandGlobalLocald(Randomizable, GlobalLocald):
    """:class:`GlobalLocald` with a random subset of at most ``num_patches`` patches per sample.

    Training on a few patches per image bounds memory and time on huge images; the subset
    is drawn once per sample, in grid order. Other arguments: see :class:`GlobalLocald`.
    """

    def __init__(self, keys: KeysCollection = ("image", "label"), num_patches: int = 4, **kwargs: Any) -> None:
        super().__init__(keys, **kwargs)
        if num_patches < 1:
            raise ValueError(f"num_patches must be at least 1, got {num_patches}")
        self.num_patches = num_patches
        self._chosen = np.zeros(0, dtype=np.int64)

    def randomize(self, count: int) -> None:
        """Draw which of the grid's ``count`` patches go into the sample (the trainer's rule)."""
        self._chosen = choose_patches(count, self.num_patches, self.R)

    def select(self, count: int) -> np.ndarray:
        """A fresh random subset of the grid's ``count`` patches, drawn for this sample."""
        self.randomize(count)
        return self._chosen


# -- coarse-to-fine boxes -------------------------------------------------------------


class RandForegroundBox(Randomizable, Transform):
    """The coarse-to-fine training box: the label's foreground box, relaxed, jittered, grown to a patch.

    The trainer's rule, :func:`glmed.data.stage_samples.training_box`: the box inference
    would take from a perfect coarse mask (the label on the ``global_size`` grid,
    :func:`glmed.geometry.coarse_to_fine_boxes`: tight box around all foreground, relaxed to
    ``target_ratio`` foreground : background, the paper's 1:1); then each edge moves by up
    to ``jitter`` of the box's size, so the local branch learns from boxes as imprecise as
    the coarse prediction's; with probability ``widening`` each edge then moves a random
    part of the way to the image's border (loose boxes, as a poor coarse pass gives); then
    the box grows to at least one patch. Always inside the image and never empty; the whole
    image when the label has no foreground.

    Args:
        target_ratio: foreground : background wanted in the box.
        jitter: largest edge move, as a fraction of the box's height or width (the
            trainer's 0.15).
        global_size: side, or ``(height, width)``, of the global grid the label is looked at on.
        patch_size: side, or ``(height, width)``, of a full-resolution patch.
        per_component: a box per connected lesion, one of them drawn at random.
        widening: probability that the box is widened toward the image's edges (the
            trainer's default 0; the coarse-to-fine recipes use 0.5).
    """

    def __init__(
        self,
        target_ratio: float = 1.0,
        jitter: float = 0.15,
        global_size: int | Size = 508,
        patch_size: int | Size = 508,
        per_component: bool = False,
        widening: float = 0.0,
    ) -> None:
        if not target_ratio > 0 or jitter < 0:
            raise ValueError(f"target_ratio ({target_ratio}) must be positive and jitter ({jitter}) non-negative")
        if not 0 <= widening <= 1:
            raise ValueError(f"widening must be in [0, 1], got {widening}")
        if min(np.atleast_1d(global_size)) < 1 or min(np.atleast_1d(patch_size)) < 1:
            raise ValueError(f"global_size ({global_size}) and patch_size ({patch_size}) must be positive")
        self.target_ratio = target_ratio
        self.jitter = jitter
        self.global_size = global_size
        self.patch_size = patch_size
        self.per_component = per_component
        self.widening = widening
        self._seed = 0

    def randomize(self, data: Any = None) -> None:
        """Draw the seed of the box's random choices (edge moves, lesion, widening)."""
        self._seed = seed_from(self.R)

    def __call__(self, label: Array | ImageReader, key: Hashable = "label", randomize: bool = True) -> np.ndarray:
        """``1×H×W`` or ``H×W`` label (or a single-channel reader) → ``(row0, col0, row1, col1)`` int64 array."""
        if randomize:
            self.randomize()
        if not isinstance(label, ImageReader):
            label = check_class_map(label, str(key))
        box = training_box(label, self.global_size, self.patch_size, self.target_ratio, self.per_component,
                           self.jitter, np.random.default_rng(self._seed), self.widening)
        if box is None:
            height, width = label.size if isinstance(label, ImageReader) else label.shape
            box = (0, 0, height, width)
        return np.asarray(box, dtype=np.int64)


class RandForegroundBoxd(Randomizable, MapTransform):
    """Dictionary wrapper of :class:`RandForegroundBox`: stores the box under ``box_key``.

    Args:
        keys: the label key.
        box_key: where to store the box (read by :class:`GlobalLocald` and :class:`CropBoxd`).
        allow_missing_keys: allow samples without the label key.
        Other arguments: see :class:`RandForegroundBox`.
    """

    def __init__(
        self,
        keys: KeysCollection = "label",
        box_key: str = "box",
        target_ratio: float = 1.0,
        jitter: float = 0.15,
        allow_missing_keys: bool = False,
        global_size: int | Size = 508,
        patch_size: int | Size = 508,
        per_component: bool = False,
        widening: float = 0.0,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"RandForegroundBoxd takes one label key, got {self.keys}")
        self.box_key = box_key
        self.boxer = RandForegroundBox(target_ratio, jitter, global_size, patch_size, per_component, widening)

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> RandForegroundBoxd:
        """Seed this transform and its inner :class:`RandForegroundBox`, which makes the draws."""
        super().set_random_state(seed, state)
        self.boxer.set_random_state(seed, state)
        return self

    def randomize(self, data: Any = None) -> None:
        """Draw the box's random choices, once per sample (the inner boxer holds the draw)."""
        self.boxer.randomize()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Store the label's training box under ``box_key`` as a ``(row0, col0, row1, col1)`` array."""
        d = dict(data)
        self.randomize()
        for key in self.key_iterator(d):
            d[self.box_key] = self.boxer(d[key], key, randomize=False)
        return d


# -- the trainer's sample -------------------------------------------------------------


class RandStageSampled(Randomizable, MapTransform):
    """The trainer's sample for a stage, as a MONAI dictionary transform.

    Calls :class:`~glmed.data.stage_samples.StageSampler` itself — the builder the trainer
    uses — with a ``Generator`` seeded from this transform's random state, so a MONAI
    pipeline sees exactly what training sees: for coarse-to-fine, the jittered
    ground-truth box (:func:`~glmed.data.stage_samples.training_box`) cropped out and
    tiled; for the global stage the whole image (or, half the time for coarse-to-fine, the
    box); ``patches_per_image`` random patches, or all of them for a ``collect_local``
    stage. Output keys as :class:`GlobalLocald`'s (``global_image``, ``global_label``,
    ``boxes``, ``boxes_normalized``, ``image_size`` and, unless the stage is global-only,
    ``patches`` and ``patch_labels``), normalised with ImageNet statistics as the trainer's.

    Args:
        keys: image key, then label key; the image ``C×H×W`` (or a reader), the label a
            ``1×H×W`` / ``H×W`` class map (or a single-channel reader).
        config: the model's configuration (:class:`~glmed.models.glnet.GLNetConfig` or
            :class:`~glmed.models.coarse_to_fine.CoarseToFineConfig`).
        stage: the training stage; anything with ``global_only`` and ``collect_local``
            (:class:`~glmed.data.stage_samples.StageView`), e.g. a
            :class:`glmed.training.stages.Stage`. Reassign :attr:`stage` to move on.
        patches_per_image, box_jitter, box_probability_global, normalization, box_widening:
            see :class:`~glmed.data.stage_samples.StageSampler`.
        keep_source: keep the full-resolution image and label under their keys.
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "label"),
        *,
        config: GLNetConfig,
        stage: StageView,
        patches_per_image: int = 4,
        box_jitter: float = 0.15,
        box_probability_global: float = 0.5,
        normalization: Normalization = DEFAULT_NORMALIZATION,
        keep_source: bool = False,
        box_widening: float = 0.0,
    ) -> None:
        MapTransform.__init__(self, keys)
        if len(self.keys) != 2:
            raise ValueError(f"keys must name the image and the label, got {self.keys}")
        self.sampler = StageSampler(config, patches_per_image, box_jitter, box_probability_global, normalization,
                                    box_widening)
        self.stage = stage
        self.keep_source = keep_source
        self._seed = 0

    def randomize(self, data: Any = None) -> None:
        """Draw the seed of the sample's random choices (box or not, box jitter, patches)."""
        self._seed = seed_from(self.R)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Add the current stage's training sample; the image and label go unless ``keep_source``."""
        d = dict(data)
        image_key, label_key = self.keys
        missing = [key for key in self.keys if key not in d]
        if missing:
            raise KeyError(f"sample has no {missing} (RandStageSampled needs the image and its label)")
        self.randomize()
        label = d[label_key]
        if not isinstance(label, ImageReader):
            label = check_class_map(label, str(label_key), self.sampler.config.num_classes)
        sample = self.sampler(self.stage, channels_last(d[image_key]), label, np.random.default_rng(self._seed))
        if not self.keep_source:
            _drop(d, self.keys)
        d.update(sample)
        return d


class CropBoxd(MapTransform):
    """Crop channel-first images and labels to the box stored under ``box_key``.

    For the coarse-to-fine variant in which the global branch sees the box, not the whole
    image (less is lost when the box is downsampled). The box stays in the sample, in the
    original image's pixels, so predictions can be pasted back.
    """

    def __init__(self, keys: KeysCollection, box_key: str = "box", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.box_key = box_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Crop every keyed array to the stored box; the box itself stays in the sample."""
        d = dict(data)
        if self.box_key not in d:
            raise KeyError(f"sample has no box under {self.box_key!r}; run RandForegroundBoxd first")
        r0, c0, r1, c1 = (int(v) for v in np.asarray(d[self.box_key]).reshape(-1))
        cropper = SpatialCrop(roi_start=(r0, c0), roi_end=(r1, c1))
        for key in self.key_iterator(d):
            d[key] = cropper(d[key])
        return d
