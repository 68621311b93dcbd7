"""The global-local sample: a downsampled whole image plus full-resolution patches.

Everything here works on an :class:`~glmed.io.base.ImageReader` (an ``H×W×C`` array is
wrapped in one), so a slide streams through the same code as a JPEG in memory: the
global view comes from ``reader.resized`` (a low pyramid level where there is one) and
each patch is one region read. The MONAI transforms in :mod:`glmed.data.transforms` and
the inferer both build on these functions, so training and inference see the same grid,
the same pixels and the same normalisation.

Coarse-to-fine: :func:`glmed.geometry.coarse_to_fine_boxes` turns a mask (the ground truth
when training, the global branch's coarse prediction at inference) into a box relaxed to
about 1:1 foreground:background; :func:`jitter_box` and :func:`widen_box` perturb it for training and
:func:`tile_box` tiles patches inside it only.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from glmed.conventions import Box, Size
from glmed.data.normalize import DEFAULT_NORMALIZATION, Normalization
from glmed.geometry import PatchGrid, coarse_to_fine_boxes, grow_to_size, normalize_boxes, patch_grid, patch_size_for
from glmed.io.base import ImageReader
from glmed.io.open import as_reader

CONCATENATED_KEYS = ("patches", "patch_labels", "boxes", "boxes_normalized")
"""Sample keys whose first axis counts patches: :func:`collate_global_local` concatenates them."""


# -- readers and labels ---------------------------------------------------------------


def check_class_map(label: np.ndarray | torch.Tensor, key: str = "label", num_classes: int | None = None) -> np.ndarray:
    """A label as an ``H×W`` integer class map, or a ValueError saying what is wrong with it.

    Accepts ``H×W``, ``1×H×W`` and ``H×W×1`` arrays of integers, booleans, or floats holding
    whole numbers (MONAI loads 8-bit masks as float32). Colour masks, non-integral values
    (a label resampled bilinearly) and, with ``num_classes``, values outside
    ``[0, num_classes)`` (a 0/255 mask) are refused.

    Args:
        label: the label array (a CPU tensor, as MONAI loads it, is read as an array).
        key: its name in the sample, for the message.
        num_classes: number of classes, when known.
    """
    array = np.asarray(label)
    if array.ndim == 3 and 1 in (array.shape[0], array.shape[-1]):
        array = array[0] if array.shape[0] == 1 else array[..., 0]
    if array.ndim != 2:
        raise ValueError(
            f"{key!r} must be a single-channel class map (H×W), got shape {array.shape}; "
            "convert colour masks to class indices first (LabelToIndexd)"
        )
    return check_class_values(array, key, num_classes)


def check_class_values(array: np.ndarray, key: str = "label", num_classes: int | None = None) -> np.ndarray:
    """Label values of any shape checked as class indices (see :func:`check_class_map`), as integers."""
    array = np.asarray(array)
    if array.dtype == bool:
        return array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.integer):
        fractional = array[np.mod(array, 1) != 0]
        if fractional.size:
            raise ValueError(
                f"{key!r} is not an integer class map: it holds values such as {np.unique(fractional)[:5].tolist()} "
                "(resample labels with nearest neighbour)"
            )
        array = array.astype(np.int64)
    if array.size and (array.min() < 0 or (num_classes is not None and array.max() >= num_classes)):
        values = np.unique(array).tolist()
        wanted = f"[0, {num_classes})" if num_classes is not None else "non-negative"
        raise ValueError(
            f"{key!r} holds values {values[:10]}, class indices must be {wanted}; "
            "map mask values to classes first (LabelToIndexd, e.g. values=(0, 255) for a 0/255 mask)"
        )
    return array


def resize_label(label: ImageReader | np.ndarray, size: Size) -> np.ndarray:
    """A label resampled to ``size`` by nearest neighbour, sampling each output pixel's centre.

    Reads the coarsest pyramid level still at least ``size`` when ``label`` is a reader.

    Returns:
        ``size`` array in the label's dtype.
    """
    if isinstance(label, ImageReader):
        return label.sampled(size)[..., 0]
    label = np.asarray(label)
    rows = ((2 * np.arange(size[0]) + 1) * label.shape[0]) // (2 * size[0])
    cols = ((2 * np.arange(size[1]) + 1) * label.shape[1]) // (2 * size[1])
    return label[rows[:, None], cols[None, :]]


# -- patches --------------------------------------------------------------------------


@dataclass(frozen=True)
class PatchBatch:
    """Consecutive patches read from one image.

    Attributes:
        start: index of the first patch in the full list of boxes.
        boxes: ``B×4`` int64 boxes of these patches, level-0 pixels.
        pixels: ``B×p×p×C`` pixels as the reader returns them (channels last, file dtype).
    """

    start: int
    boxes: np.ndarray
    pixels: np.ndarray


def read_patches(image: ImageReader | np.ndarray, boxes: np.ndarray | Sequence[Box]) -> np.ndarray:
    """Read equally sized boxes from an image, one region read each.

    Returns:
        ``N×p×p×C`` array in the image's dtype.
    """
    reader = as_reader(image)
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    sizes = {(int(b[2] - b[0]), int(b[3] - b[1])) for b in boxes}
    if len(sizes) > 1:
        raise ValueError(f"{reader.name}: patches must share one size to be batched, got sizes {sorted(sizes)}")
    height, width = sizes.pop() if sizes else (0, 0)
    out = np.empty((len(boxes), height, width, reader.channels), dtype=reader.dtype)
    for index, (r0, c0, r1, c1) in enumerate(boxes):
        out[index] = reader.read((int(r0), int(c0), int(r1), int(c1)))
    return out


def iter_patch_batches(
    image: ImageReader | np.ndarray,
    boxes: np.ndarray | Sequence[Box],
    batch_size: int,
) -> Iterator[PatchBatch]:
    """Read the patches at ``boxes`` in batches of at most ``batch_size``, each region once.

    Memory stays at one batch of patches whatever the image's size. Normalise a batch's
    pixels with :func:`glmed.data.normalize.to_model_input` to get ``B×C×p×p`` input.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    reader = as_reader(image)
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    for start in range(0, len(boxes), batch_size):
        chunk = boxes[start : start + batch_size]
        yield PatchBatch(start=start, boxes=chunk, pixels=read_patches(reader, chunk))


# -- coarse-to-fine boxes -------------------------------------------------------------


def jitter_box(box: Box, image_size: Size, fraction: float, shifts: Sequence[float] | np.ndarray) -> Box:
    """Move each edge of a box by ``shifts[i] * fraction`` of the box's size, clamped to the image.

    Training on jittered ground-truth boxes teaches the local branch the imprecise boxes
    the coarse prediction gives at inference. The result is never empty.

    Args:
        box: ``(row0, col0, row1, col1)``.
        image_size: ``(height, width)`` of the image.
        fraction: largest move, as a fraction of the box's height (rows) or width (columns).
        shifts: four numbers in ``[-1, 1]``, one per edge, e.g. drawn uniformly.
    """
    height, width = box[2] - box[0], box[3] - box[1]
    limits = np.array([height, width, height, width], dtype=np.float64) * fraction
    moved = np.rint(np.asarray(box, dtype=np.float64) + np.asarray(shifts, dtype=np.float64) * limits)
    r0, r1 = sorted((int(np.clip(moved[0], 0, image_size[0] - 1)), int(np.clip(moved[2], 1, image_size[0]))))
    c0, c1 = sorted((int(np.clip(moved[1], 0, image_size[1] - 1)), int(np.clip(moved[3], 1, image_size[1]))))
    return (r0, c0, max(r1, r0 + 1), max(c1, c0 + 1))


def widen_box(box: Box, image_size: Size, amounts: np.ndarray | tuple[float, float, float, float]) -> Box:
    """Move each edge of ``box`` toward the image's border by ``amounts[i]`` of the way there.

    ``amounts`` are four fractions in ``[0, 1]`` (top, left, bottom, right): 0 keeps the
    edge, 1 puts it on the border, so ``(1, 1, 1, 1)`` gives the whole image.
    """
    row0, col0, row1, col1 = box
    height, width = image_size
    top, left, bottom, right = (float(a) for a in amounts)
    return (int(round(row0 * (1 - top))), int(round(col0 * (1 - left))),
            int(round(row1 + (height - row1) * bottom)), int(round(col1 + (width - col1) * right)))


def jittered_foreground_box(
    mask: np.ndarray,
    image_size: Size,
    target_ratio: float,
    jitter: float,
    shifts: Sequence[float] | np.ndarray,
    per_component: bool = False,
    pick: int = 0,
) -> Box:
    """A coarse-to-fine training box: the box inference would take from a perfect coarse mask, jittered.

    The box comes from :func:`glmed.geometry.coarse_to_fine_boxes` on ``mask`` (the label,
    at any resolution) mapped to ``image_size``; with ``per_component`` the ``pick``-th
    (modulo their count) of the per-lesion boxes. Each edge then moves by ``shifts[i] *
    jitter`` of the box's size (:func:`jitter_box`), so the local branch learns from boxes
    as imprecise as a coarse prediction's. The whole image (jittered) when the mask has
    no foreground.
    """
    boxes = coarse_to_fine_boxes(np.asarray(mask) != 0, image_size, target_ratio, per_component=per_component)
    box = boxes[pick % len(boxes)] if boxes else (0, 0, int(image_size[0]), int(image_size[1]))
    return jitter_box(box, image_size, jitter, shifts)


def tile_box(image_size: Size, box: Box, patch_size: int | Size = 508, overlap: int = 50) -> PatchGrid:
    """Patches that cover ``box`` and stay inside it (coarse-to-fine's local pass).

    A box smaller than one patch along an axis is first grown about its centre to one
    patch there (never beyond the image), so every patch keeps the full patch size.
    """
    patch: Size = (patch_size, patch_size) if isinstance(patch_size, int) else patch_size
    r0, c0, r1, c1 = (int(v) for v in box)
    if not (0 <= r0 < r1 <= image_size[0] and 0 <= c0 < c1 <= image_size[1]):
        raise ValueError(f"box {tuple(box)} is not a non-empty box inside an image of size {tuple(image_size)}")
    region = grow_to_size((r0, c0, r1, c1), patch_size_for(image_size, patch), image_size)
    return patch_grid(image_size, patch, overlap, region=region)


# -- the sample -----------------------------------------------------------------------


def global_local_sample(
    image: ImageReader | np.ndarray,
    boxes: np.ndarray,
    label: ImageReader | np.ndarray | None = None,
    global_size: int | Size = 508,
    normalization: Normalization | None = DEFAULT_NORMALIZATION,
    num_classes: int | None = None,
    with_patches: bool = True,
) -> dict[str, torch.Tensor]:
    """One image's GLNet sample: its global view and the patches at ``boxes``.

    Args:
        image: the image, as a reader or an ``H×W×C`` array.
        boxes: ``N×4`` level-0 patch boxes of one size (:func:`glmed.geometry.patch_grid`,
            :func:`tile_box`).
        label: its ``H×W`` class map (array or single-channel reader), if training.
        global_size: side, or ``(height, width)``, of the global view.
        normalization: pixel scaling; None only converts to float32.
        num_classes: checks label values when given.
        with_patches: read the patches' pixels (False: boxes only, e.g. for the inferer).

    Returns:
        ``global_image`` C×g×g float32, ``boxes`` N×4 int64, ``boxes_normalized`` N×4 float64
        (fractions of the image, exact), ``image_size`` (2,) int64; ``patches`` N×C×p×p
        float32 with ``with_patches``; ``global_label`` g×g and ``patch_labels`` N×p×p int64
        with a label.
    """
    reader = as_reader(image)
    size: Size = (global_size, global_size) if isinstance(global_size, int) else global_size
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    if normalization is None:
        channels = reader.channels
        normalization = Normalization((0.0,) * channels, (1.0,) * channels, 1.0, channels)
    sample = {
        "global_image": normalization(reader.resized(size), name=reader.name),
        "boxes": torch.from_numpy(boxes.copy()),
        "boxes_normalized": torch.from_numpy(normalize_boxes(boxes, reader.size)),
        "image_size": torch.tensor(reader.size, dtype=torch.int64),
    }
    if with_patches:
        sample["patches"] = normalization(read_patches(reader, boxes), name=reader.name)
    if label is not None:
        label_reader = as_reader(label, name="label")
        if label_reader.size != reader.size:
            raise ValueError(f"label size {label_reader.size} differs from image size {reader.size}")
        global_label = check_class_values(resize_label(label_reader, size), label_reader.name, num_classes)
        sample["global_label"] = torch.from_numpy(global_label.astype(np.int64))
        if with_patches:
            patch_labels = check_class_values(read_patches(label_reader, boxes)[..., 0], label_reader.name, num_classes)
            sample["patch_labels"] = torch.from_numpy(patch_labels.astype(np.int64))
    return sample


def collate_global_local(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Batch global-local samples whose patch counts differ (a ``collate_fn`` for DataLoader).

    Global images, labels and sizes are stacked (``B×...``); the per-patch keys
    (:data:`CONCATENATED_KEYS`) are concatenated along the patch axis and ``image_index``
    (``N`` int64) says which of the ``B`` samples each patch came from, as GLNet's
    ``forward`` needs. Other keys are stacked when they are tensors or arrays of one
    shape, and otherwise gathered in lists (file names, metadata).
    """
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [sample[key] for sample in samples]
        if key in CONCATENATED_KEYS:
            tensors = [torch.as_tensor(v) for v in values]
            shapes = {tuple(t.shape[1:]) for t in tensors}
            if len(shapes) > 1:
                raise ValueError(
                    f"cannot batch {key!r} of different patch shapes {sorted(shapes)}: images smaller than a "
                    "patch get smaller patches; use batch size 1 or a patch size no larger than every image"
                )
            batch[key] = torch.cat(tensors)
        else:
            batch[key] = _stack_or_list(values)
    if "boxes" in batch:
        counts = torch.tensor([len(sample["boxes"]) for sample in samples])
        batch["image_index"] = torch.repeat_interleave(torch.arange(len(samples)), counts)
    return batch


def _stack_or_list(values: list[Any]) -> Any:
    if all(isinstance(v, (torch.Tensor, np.ndarray)) for v in values):
        tensors = [torch.as_tensor(v) for v in values]
        if len({(t.shape, t.dtype) for t in tensors}) == 1:
            return torch.stack(tensors)
    return values
