"""Whole-image inference with GLNet: the loop over patches that the model itself never runs.

The device only ever holds the downsampled image, one batch of patches and the global
branch's maps; the full-resolution image stays with its reader on the host (an array in
memory or a file read region by region), and the per-patch outputs are averaged and written as
soon as each part is final (:class:`~glmed.inference.merging.RowBandMerger`) into a mask that may
itself live on disk, so whole slides stream through (:mod:`glmed.inference.slide`).

MONAI's ``PatchInferer`` calls its network with the patches alone, and
``sliding_window_inference`` needs the whole image as one tensor and places windows its
own way; GLNet needs each patch's place (to crop the global maps) and the same patch grid
as training, so the loop is written here over :func:`glmed.geometry.patch_grid`.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from glmed.conventions import Box, Size
from glmed.data.normalize import DEFAULT_NORMALIZATION, Normalization, to_model_input
from glmed.data.samples import iter_patch_batches
from glmed.geometry import PatchGrid, coarse_to_fine_boxes, patch_grid, patch_size_for
from glmed.inference import execution
from glmed.inference.box_growth import grow_boxes, remembered_boxes
from glmed.inference.encoder_reuse import EncoderReuse, EncoderStore, batch_key
from glmed.inference.execution import AMP_MODES, DEFAULT_AMP, DEFAULT_CHANNELS_LAST
from glmed.inference.finishing import finish_in_place, finish_problem
from glmed.inference.glass import (
    TISSUE_BOX_MARGIN,
    background_answer,
    boxes_on_tissue,
    glass_note,
    tissue_patches,
    with_background,
)
from glmed.inference.memory_budget import MemoryBudget, MemoryPlan, parse_memory, plan_for_budget
from glmed.inference.merging import RowBandMerger, fill_outside, label_dtype, upsample_to_labels
from glmed.inference.notes import box_edge_notes, cover_notes, foreground_fraction, refine_notes, size_notes
from glmed.inference.refinement import (
    DEFAULT_MARGIN,
    DEFAULT_REFINE,
    global_answers,
    in_grid_order,
    refine_problem,
    uncertain_patches,
)
from glmed.inference.result import SegmentationResult, thumbnail_size
from glmed.inference.resume import RowLedger, resume_start
from glmed.inference.tta import (
    Dihedral,
    combined_scores,
    mean_answers,
    rotation_aspect_note,
    tta_note,
    tta_problem,
    views_for,
)
from glmed.io.base import ImageReader
from glmed.io.open import ImageLike, open_as_reader
from glmed.io.region import RegionReader
from glmed.io.tissue import TissueMask
from glmed.models.coarse_to_fine import CoarseToFineGLNet
from glmed.models.ensemble import ensemble
from glmed.models.fpn import FINAL
from glmed.models.glnet import GLNet, GLNetConfig, Sharing, spatial_size
from glmed.models.placement import Placement, model_device
from glmed.models.sharing import collect_local_context

INFERENCE_SETTINGS = ("overlap", "target_ratio", "per_component", "min_component", "grow_boxes")
"""Config fields a prediction may change without rebuilding the network: the patch overlap and
coarse-to-fine's box rule (and its growth). Sizes and classes are fixed by the weights."""

DEFAULT_BATCH_SIZE = 4
"""Patches per forward pass when neither ``batch_size`` nor ``max_memory`` says otherwise."""

class GlobalLocalInferer:
    """Runs a :class:`~glmed.models.glnet.GLNet` over a whole image, patch batch by patch batch.

    Args:
        batch_size: patches per forward pass; device memory grows with it, not with the image.
            :data:`DEFAULT_BATCH_SIZE` (4) by default; with ``max_memory``, the most it may choose.
        device: where the network runs; the model's own device by default. The model is
            moved there for the call and back afterwards.
        normalization: pixel scaling, as in training.
        progress: show a progress bar over patch batches.
        amp: ``"bf16"`` runs the forward passes under bfloat16 autocast (CPU or CUDA);
            probabilities, their averaging and the coarse mask stay float32. ``"off"``
            (:data:`~glmed.inference.execution.DEFAULT_AMP`, see there for the measured figures) computes in the model's
            own type. None (the default) is ``"off"``, unless ``max_memory`` switches bf16 on.
        channels_last: keep the weights and inputs in channels-last memory for the call (the
            model's own layout is restored afterwards). Not bit-identical to the default layout
            (other convolution kernels round differently); off by default
            (:data:`~glmed.inference.execution.DEFAULT_CHANNELS_LAST` has the measured speed and agreement).
        refine: where the local branch runs inside the region GLNet segments (the whole image,
            or each coarse-to-fine box). ``"box"`` (:data:`~glmed.inference.refinement.DEFAULT_REFINE`,
            the paper's way): on every patch. ``"uncertain"``: only on the patches where the
            region's first, context-free global pass is unsure
            (:func:`~glmed.inference.refinement.uncertain_patches`); the others take that pass's
            probabilities sampled at their window, so they cost no patch read and no local pass.
            A bidirectional model then collects local context from the refined patches only: the
            stitched local→global maps are 0 elsewhere, so the global branch's second pass sees
            local context only around the uncertain area. ``result.coarse`` is then the first
            pass's mask (what the decision and the skipped patches used). Needs a global branch
            (refused for ``local_only``); a ``global_only`` prediction ignores it.
        margin: with ``refine="uncertain"``, also refine where a pixel of the global map has a
            top-class probability below ``1 - margin``; in (0, 1). None (the default) decides by
            the one-class rule alone: focal-trained models are too unsure for a probability rule
            (:data:`~glmed.inference.refinement.DEFAULT_MARGIN` has the measurement). Unused by ``"box"``.
        max_memory: a budget for the prediction's peak memory (``"1GB"``, ``"512MB"``,
            ``"1.5GiB"`` or a number of bytes): the batch size is then the largest whose
            estimate, measured on this model and device before the prediction starts, stays
            under it (:mod:`glmed.inference.memory_budget` says how, and what it costs), at most
            ``batch_size`` when that is given and at most the image's patch count; bf16 autocast
            is switched on only when float32 cannot fit even one patch at a time, ``amp`` was left
            unset and the device computes bfloat16 natively. ``result.notes`` says what was
            chosen. On the CPU the budget is the process's memory (host arrays such as the mask
            count); on a GPU, the GPU's. A budget below batch 1's estimate raises
            :class:`ValueError` before any patch is read (see :meth:`fitted`).
        finish: ``"lesion"`` finishes a two-class mask as the ISIC task defines a lesion: the largest
            connected foreground region, its holes filled
            (:func:`~glmed.inference.finishing.finish_lesion_mask`), applied to the final mask
            (not to ``result.coarse``) and said in ``result.notes``. Refused for models of more
            than two classes, where it would erase the other classes. Meant for lesion images
            held in memory, not for slides (many regions per image), so
            :func:`~glmed.inference.slide.predict_to_tiff` does not offer it. None (default): off.
        keep_regions_above: with ``finish``, also keep every other region of more than this
            many pixels (counted with its filled holes); None keeps the largest alone.
        tta: test-time augmentation: ``"flips"`` averages the probabilities of the image, its
            horizontal and its vertical flip (3 views); ``"dihedral"`` adds the 90° rotations and the
            other reflections (8 views, for slides and other images without an up). Each view runs
            the global branch on the transformed global view and the local branch on the
            transformed patches at their transformed places; each patch's probabilities are turned
            back and averaged over the views before they are merged, so streaming to a slide and
            resuming work as without it. The coarse mask, coarse-to-fine's boxes and
            ``refine="uncertain"``'s choice come from the views' mean global probabilities, and
            skipped patches take the global answer averaged over the views. Costs ×3 or ×8 passes
            and holds each view's global maps through the local passes
            (:mod:`glmed.inference.tta`). None (default): off.
        reuse_encoder: bidirectional sharing: keep each refined patch's encoder maps (ResNet
            ``c2``–``c5``) from the collect pass and give them to the final pass, which then skips
            the encoder (:mod:`glmed.inference.encoder_reuse`): the same mask bit for bit, about
            a fifth less time with ResNet50, for memory held between the passes (31 MB per
            508-pixel patch in float32 with ResNet50: 4.7 GB for a 6748×4499 image).
            ``result.notes`` says how many patches took kept maps and the most held. None (the
            default) is off, unless ``max_memory`` is set and the kept maps fit its budget
            beside the batch it chose; True or False decides. Other sharing modes have no
            collect pass and ignore it.
        settings: overrides of :data:`INFERENCE_SETTINGS` for this inferer's predictions
            (e.g. ``target_ratio=2.0``); the model's config (what it was trained and validated
            with, and what its checkpoint records) is left as it is.

    The next batch of patches is read and normalised on a background thread while the current
    one computes (a single worker, one batch ahead: memory grows by one batch of pixels), and
    nothing inside the forward passes waits for the device, so on a GPU reading, transfers and
    computing overlap; on a CPU, reading a slide's tiles overlaps with the network.
    """

    def __init__(
        self,
        batch_size: int | None = None,
        device: torch.device | str | None = None,
        normalization: Normalization = DEFAULT_NORMALIZATION,
        progress: bool = False,
        amp: str | None = None,
        channels_last: bool = DEFAULT_CHANNELS_LAST,
        refine: str = DEFAULT_REFINE,
        margin: float | None = DEFAULT_MARGIN,
        max_memory: str | int | float | MemoryBudget | None = None,
        finish: str | None = None,
        keep_regions_above: int | None = None,
        tta: str | None = None,
        reuse_encoder: bool | None = None,
        **settings: Any,
    ) -> None:
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        budget = None if max_memory is None else parse_memory(max_memory)
        if amp is not None and amp not in AMP_MODES:
            raise ValueError(f"unknown amp mode {amp!r}; choose one of {sorted(AMP_MODES)}")
        problem = refine_problem(refine, margin) or finish_problem(finish, keep_regions_above) or tta_problem(tta)
        if problem is not None:
            raise ValueError(problem)
        unknown = sorted(set(settings) - set(INFERENCE_SETTINGS))
        if unknown:
            raise TypeError(
                f"unknown inference setting(s) {unknown}; a prediction can change {list(INFERENCE_SETTINGS)}"
            )
        self.batch_size = DEFAULT_BATCH_SIZE if batch_size is None else batch_size
        self.batch_cap = batch_size  # as given: with max_memory, the most a batch may hold
        self.device = None if device is None else torch.device(device)
        self.normalization = normalization
        self.progress = progress
        self.amp = DEFAULT_AMP if amp is None else amp
        self.amp_chosen = amp is not None  # max_memory may switch bf16 on only when the caller did not choose
        self.max_memory = budget
        self.channels_last = bool(channels_last)
        self.refine = refine
        self.margin = None if margin is None else float(margin)
        self.finish, self.keep_regions_above = finish, keep_regions_above
        self.tta = tta
        self.reuse_encoder = bool(reuse_encoder)
        self.reuse_chosen = reuse_encoder is not None  # max_memory may switch it on only when the caller did not choose
        self.settings = {name: value for name, value in settings.items() if value is not None}

    @property
    def views(self) -> tuple[Dihedral, ...]:
        """The transforms a prediction averages over (:mod:`glmed.inference.tta`); the identity alone without tta."""
        return views_for(self.tta)

    def config_for(self, model: GLNet) -> GLNetConfig:
        """``model``'s config with this inferer's overrides (validated like the model's own).

        Raises:
            ValueError: an override the model cannot take, ``refine="uncertain"`` for a model
                without a global branch (``local_only``), which has nothing to be unsure with, or
                ``finish`` for a model of more than two classes.
        """
        if self.refine == "uncertain" and not model.sharing.has_global:
            raise ValueError(f"refine='uncertain' skips patches where the global branch is confident; this model's "
                             f"sharing is {model.sharing.value!r}, without a global branch: use refine='box'")
        if self.finish is not None and model.config.num_classes != 2:
            raise ValueError(f"finish={self.finish!r} keeps one foreground region without holes, for two-class "
                             f"(background, lesion) models; this model has {model.config.num_classes} classes, "
                             "whose other classes finishing would erase: leave finish=None")
        if not self.settings:
            return model.config
        foreign = sorted(name for name in self.settings if not hasattr(model.config, name))
        if foreign:
            raise ValueError(f"{foreign} apply to coarse-to-fine models only; this is a {type(model).__name__}")
        return replace(model.config, **self.settings)

    def __call__(
        self,
        model: GLNet,
        image: ImageLike,
        out: np.ndarray | None = None,
        with_coarse: bool = True,
        ledger: RowLedger | None = None,
        thumbnail: bool = True,
        global_only: bool = False,
        probabilities: np.ndarray | None = None,
        tissue: TissueMask | None = None,
    ) -> SegmentationResult:
        """Segment one image given as a reader, an ``H×W×C`` array or a file path.

        Args:
            model: the network; put in evaluation mode and on the inferer's device for the
                call only.
            image: the image to segment; a path is opened and closed again here.
            out: an ``H×W`` array to write the mask into (every pixel is written), e.g. a
                :class:`numpy.memmap` for a slide larger than memory; a new array by default.
            with_coarse: also return the global branch's own mask at full size (in memory).
            thumbnail: keep a small copy of the image for display (in-memory masks only); callers
                that never show the result (evaluation, the CLI) skip its cost.
            ledger: for a resumed run into the same ``out``: rows of each region already
                written are not computed again, and progress is recorded as rows are finished.
            global_only: run the global branch alone: its mask, upsampled, without reading a
                single patch (what a global training stage has learnt, at a fraction of the cost).
            probabilities: an ``H×W`` uint8 array to write how sure the mask is into, alongside
                ``out`` and in the same bands (:func:`~glmed.inference.merging.confidence_bytes`:
                the foreground's probability for two classes, the winning class's otherwise, ×255);
                outside coarse-to-fine's boxes, background by rule, 0 and 255 respectively.
            tissue: where the tissue is on the image (:func:`glmed.io.tissue.detect_tissue`): patches
                without any are never read nor run through the local branch, and answer background
                (class 0); coarse-to-fine refines boxes on tissue only (:mod:`glmed.inference.glass`).
                ``result.patches_glass`` counts the patches skipped. None (default): every patch is
                segmented. A model without a local branch (``global_only``) reads no patch, so skips none.
        """
        if global_only and not model.sharing.has_global:
            raise ValueError(f"global_only needs a global branch; this model's sharing is {model.sharing.value!r}")
        if global_only and self.max_memory is not None:
            raise ValueError("max_memory chooses the patch batch size; a global_only prediction reads no patches")
        config = self.config_for(model)  # bad overrides fail before any file is opened
        reader, opened = open_as_reader(image)
        try:
            if out is not None and out.shape != tuple(reader.size):
                raise ValueError(f"out has shape {out.shape}, but {reader.name} is {tuple(reader.size)}")
            if probabilities is not None and (probabilities.shape != tuple(reader.size)
                                              or probabilities.dtype != np.uint8):
                raise ValueError(f"probabilities must be a uint8 array of {reader.name}'s size "
                                 f"{tuple(reader.size)}, got {probabilities.dtype} {probabilities.shape}")
            if tissue is not None and tuple(tissue.image_size) != tuple(reader.size):
                raise ValueError(f"the tissue mask is for an image of size {tuple(tissue.image_size)}, but "
                                 f"{reader.name} is {tuple(reader.size)}")
            with self._placed(model) as (placement, moved), torch.inference_mode():
                runner, plan = self, None
                if self.max_memory is not None:  # measured before any patch is read; refuses a budget too small
                    runner, plan = self._fit(model, config, reader.size, placement, moved, out is None, with_coarse)
                result = runner._predict(model, config, reader, placement, out, with_coarse, ledger, thumbnail,
                                         global_only, probabilities=probabilities, tissue=tissue)
            if plan is not None:
                result.notes.insert(0, plan.note)
            return result
        finally:
            if opened:
                reader.close()

    def fitted(
        self, model: GLNet, image_size: Size, *, out_in_memory: bool = True, with_coarse: bool = True
    ) -> tuple[GlobalLocalInferer, MemoryPlan | None]:
        """This inferer with the batch size (and autocast) ``max_memory`` allows for an image of ``image_size``.

        Measures the model's passes on its device (:func:`~glmed.inference.memory_budget.plan_for_budget`);
        without ``max_memory`` returns this inferer unchanged. The returned inferer has a fixed
        batch size and no budget, so what it records (:mod:`glmed.inference.slide`'s resume
        identity) and computes is what the prediction will use.

        A budget below the estimate at batch 1 is refused with a :class:`ValueError` naming the
        estimate (the least budget that works), rather than run at batch 1 over it: a budget is
        a limit the caller sets for a reason (a GPU shared with others, a machine without room
        to swap), and an estimate already over it means a run likely to fail, or to crowd out its
        neighbours, only after the time spent reading and computing.

        Args:
            model: the network to run.
            image_size: ``(height, width)`` of the image to segment.
            out_in_memory: the mask will be a new in-memory array (``out`` not given), which counts
                against a CPU budget; a memory-mapped file's pages do not.
            with_coarse: a full-size coarse mask will be kept too.
        """
        if self.max_memory is None:
            return self, None
        config = self.config_for(model)
        with self._placed(model) as (placement, moved), torch.inference_mode():
            return self._fit(model, config, image_size, placement, moved, out_in_memory, with_coarse)

    def _fit(
        self, model: GLNet, config: GLNetConfig, image_size: Size, placement: Placement, moved: bool,
        out_in_memory: bool, with_coarse: bool,
    ) -> tuple[GlobalLocalInferer, MemoryPlan]:
        """Plan for ``max_memory`` with the model in place; returns the inferer to run and the plan."""
        plan = plan_for_budget(self, model, config, placement, image_size, out_in_memory=out_in_memory,
                               with_coarse=with_coarse, weights_moved=moved,
                               native_bf16=execution.native_bf16(placement.device))
        runner = copy.copy(self)
        runner.batch_size, runner.amp, runner.max_memory = plan.batch_size, plan.amp, None
        runner.reuse_encoder = plan.reuse_encoder
        return runner, plan

    @contextlib.contextmanager
    def _placed(self, model: GLNet) -> Iterator[tuple[Placement, bool]]:
        """The model in evaluation mode, on this inferer's device and layout, for a ``with`` block.

        Yields the placement and whether the model was moved to another device for it. Each
        module's own training flag, the model's device and its layout are restored afterwards, so
        a trainer's frozen parts stay frozen when validation runs in the middle of a stage, and
        the caller's model stays where the caller put it.
        """
        placement = Placement.of(model, self.device)
        home = model_device(model)
        modes = {module: module.training for module in model.modules()}
        model.eval().to(placement.device)
        layouts = None
        try:
            if self.channels_last:
                layouts = execution.to_channels_last(model)
            target = placement.device
            moved = home.type != target.type or None not in (home.index, target.index) and home.index != target.index
            yield placement, moved
        finally:
            if layouts is not None:
                execution.restore_layouts(layouts)
            model.to(home)
            for module, training in modes.items():
                module.training = training

    def _predict(
        self,
        model: GLNet,
        config: GLNetConfig,
        reader: ImageReader,
        placement: Placement,
        out: np.ndarray | None,
        with_coarse: bool,
        ledger: RowLedger | None,
        thumbnail: bool,
        global_only: bool,
        *,
        probabilities: np.ndarray | None = None,
        tissue: TissueMask | None = None,
    ) -> SegmentationResult:
        """:meth:`__call__` once the model is in place (inside ``torch.inference_mode``)."""
        dtype = label_dtype(config.num_classes)
        keep_thumbnail = thumbnail and out is None
        if out is None:
            out = np.empty(reader.size, dtype=dtype)
        elif not np.can_cast(dtype, out.dtype):
            raise ValueError(f"out is {out.dtype}, which cannot hold {model.config.num_classes} class indices; "
                             f"use {dtype}")
        if self.amp != "off" and placement.device.type == "cpu" and not execution.cpu_has_bf16():
            result_notes = ["amp='bf16' on a CPU without native bfloat16 (no AVX512-BF16/AMX): its "
                            "convolutions fall back to slow kernels, many times slower than float32"]
        else:
            result_notes = []
        reuse = EncoderReuse() if self.reuse_encoder and model.sharing is Sharing.BIDIRECTIONAL else None
        if global_only:
            result = self._segment_global(model, config, reader, placement, out, probabilities=probabilities)
        elif isinstance(model, CoarseToFineGLNet):
            result = self._segment_coarse_to_fine(model, config, reader, placement, out, with_coarse, ledger,
                                                  probabilities=probabilities, tissue=tissue, reuse=reuse)
        else:
            whole = (0, 0, *reader.size)
            result = self._segment(model, config, reader, placement, out, with_coarse, ledger, whole,
                                   probabilities=probabilities, tissue=tissue, reuse=reuse)
        if reuse is not None and not global_only:
            result_notes.append(reuse.note())
        if tissue is not None and not global_only and model.sharing.has_local:
            considered = result.patches + result.patches_skipped + result.patches_glass
            result_notes.append(glass_note(result.patches_glass, considered, tissue))
        if self.refine == "uncertain" and not global_only:
            result_notes += refine_notes(result.patches, result.patches_skipped, self.margin,
                                         len(result.boxes) if isinstance(model, CoarseToFineGLNet) else None)
        if self.tta is not None:
            reads_patches = not global_only and model.sharing is not Sharing.GLOBAL_ONLY
            result_notes.append(tta_note(self.tta, self.views, reads_patches))
            squashed = rotation_aspect_note(self.tta, reader.size)
            if squashed is not None:
                result_notes.append(squashed)
        if self.finish is not None:  # before the notes below, so they describe the finished mask
            result_notes += finish_in_place(result.mask, self.keep_regions_above)
        two_class = config.num_classes == 2  # elsewhere class 0 is a class like the others (DeepGlobe)
        result.notes += result_notes + ((cover_notes(foreground_fraction(result.mask)) if two_class else [])
                         + box_edge_notes(result.mask, result.boxes, reader.size,
                                          grew=getattr(config, "grow_boxes", 0) > 0)
                         + size_notes(reader.size, config.trained_image_size))
        if keep_thumbnail:
            result.thumbnail = reader.resized(thumbnail_size(reader.size))
        return result

    def _segment(
        self,
        model: GLNet,
        config: GLNetConfig,
        reader: ImageReader,
        placement: Placement,
        out: np.ndarray,
        with_coarse: bool,
        ledger: RowLedger | None,
        region: Box,
        *,
        probabilities: np.ndarray | None = None,
        tissue: TissueMask | None = None,
        reuse: EncoderReuse | None = None,
    ) -> SegmentationResult:
        """Plain GLNet over a whole image (or a region's view) into ``out`` (and ``probabilities``).

        ``with_coarse`` also upsamples the global branch's own mask to full size. ``region``
        names the part of the original image this is, for the ledger and the ``tissue`` mask
        (whose patches of glass only are left out and answer background,
        :mod:`glmed.inference.glass`). With ``refine="uncertain"``
        the local branch runs only on the patches the first global pass is unsure about; the
        others take that pass's answer (:mod:`glmed.inference.refinement`). With ``tta`` every
        pass runs once per view and the views' answers are averaged (:mod:`glmed.inference.tta`).
        With ``reuse`` (bidirectional only), the final pass takes the collect pass's encoder maps
        (:mod:`glmed.inference.encoder_reuse`).
        """
        mode = model.sharing
        size = reader.size
        grid = patch_grid(size, config.patch_size, config.overlap)
        done = ledger.rows_done(region) if ledger is not None and mode is not Sharing.GLOBAL_ONLY else 0
        if done >= size[0] and not with_coarse:
            return SegmentationResult(mask=out)  # finished by an earlier run
        views = self.views
        view_maps: list[dict[str, torch.Tensor] | None] = [None] * len(views)  # what each view's local passes read
        store: EncoderStore | None = None  # the collect pass's encoder maps, for the final pass (reuse_encoder)
        coarse = None
        first_logits: list[torch.Tensor] | None = None  # each view's context-free answer, for refine="uncertain"
        on_tissue = tissue_patches(tissue, grid, region)
        refined = on_tissue.copy()  # which patches the local branch runs on: never glass
        if mode.has_global:  # every mode but local_only, so bidirectional and global_only too
            global_image = self._global_input(reader, config.global_size, placement)
            global_size = spatial_size(global_image)
            maps = [self._global_features(model, view, global_image, placement) for view in views]
            if self.refine == "uncertain" and mode.has_local:
                first_logits = [self._view_logits(model, view, view_maps_, global_size, placement)
                                for view, view_maps_ in zip(views, maps, strict=True)]
                refined = uncertain_patches(combined_scores(first_logits), grid.normalized(), self.margin) & on_tissue
        # Resume at the start of the batch that held the first unfinished refined patch, so every
        # patch is batched as in an uninterrupted run (batch shape can change results in the last bits).
        start = resume_start(grid.boxes[:, 2] > done, refined, self.batch_size)
        if mode.has_global:
            if mode is Sharing.BIDIRECTIONAL and refined.any():
                collected = PatchGrid(grid.image_size, grid.boxes[refined])
                if reuse is not None:  # only the batches the final pass will run (all but a resumed run's done ones)
                    store = reuse.store(grid.boxes[start:][refined[start:]])
                for number, view in enumerate(views):
                    context = self._collect(model, reader, collected, maps[number], view, placement, store)
                    maps[number] = {}  # the second pass recomputes every map: the first pass's can go before it
                    maps[number] = self._global_features(model, view, global_image, placement, context)
                    del context
            if mode is Sharing.GLOBAL_ONLY or with_coarse:
                scores = (combined_scores(first_logits) if first_logits is not None else combined_scores(
                    [self._view_logits(model, view, view_maps_, global_size, placement)
                     for view, view_maps_ in zip(views, maps, strict=True)]))
                if mode is Sharing.GLOBAL_ONLY:
                    return SegmentationResult(mask=out, coarse=_coarse_into(scores, out, with_coarse, probabilities))
                coarse = upsample_to_labels(scores, size)
                del scores
            # Only the maps the local passes read stay alive through them (all twelve for g2l).
            view_maps = [{point: view_maps_[point] for point in (*mode.global_to_local_points, FINAL)}
                         for view_maps_ in maps]
            del maps
        remaining = PatchGrid(grid.image_size, grid.boxes[start:])
        refined, glass = refined[start:], ~on_tissue[start:]
        record = None if ledger is None else (lambda rows: ledger.record(region, rows))
        try:
            self._stitch_patches(model, reader, remaining, list(zip(views, view_maps, strict=True)), placement, out,
                                 done, record, refined, first_logits, glass, probability_out=probabilities,
                                 encoded=store)
        finally:
            if store is not None:
                store.clear()
        local_patches, glass_patches = int(refined.sum()), int(glass.sum())
        return SegmentationResult(mask=out, coarse=coarse, patches=local_patches,
                                  patches_skipped=len(remaining) - local_patches - glass_patches,
                                  patches_glass=glass_patches)

    def _global_features(
        self, model: GLNet, view: Dihedral, global_image: torch.Tensor, placement: Placement,
        context: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """The global branch's maps of ``view`` of the global image (with local context, for a second pass)."""
        with self._autocast(placement):
            return model.global_features(self._oriented(view, global_image), context)

    def _view_logits(
        self, model: GLNet, view: Dihedral, maps: dict[str, torch.Tensor], size: Size, placement: Placement
    ) -> torch.Tensor:
        """``K×g×g`` float32 global logits of one view's maps, turned back to the image's orientation."""
        with self._autocast(placement):
            logits = model.global_logits(maps, view.size(size))[0].float()
        return view.undo(logits)

    def _collect(
        self, model: GLNet, reader: ImageReader, grid: PatchGrid, global_maps: dict[str, torch.Tensor],
        view: Dihedral, placement: Placement, store: EncoderStore | None = None,
    ) -> dict[str, torch.Tensor]:
        """Bidirectional sharing's collect pass over ``view`` of ``grid``'s patches: the stitched local maps.

        With a ``store``, each batch's encoder maps are kept there for the final pass.
        """
        what = "collecting local features" + ("" if view.is_identity else f" ({view.name})")
        keys: list[Any] = []  # each batch's key, in the order the pass runs them
        keep = None if store is None else (lambda number, encoded: store.keep(keys[number], encoded))

        def oriented(collecting: Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]) -> Iterator[
                tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
            for pixel_boxes, boxes, patches in collecting:
                keys.append(batch_key(view, pixel_boxes))
                # Boxes and index stay on the host: the canvas needs them there, the model gets
                # them sent without waiting (collect_local_context).
                yield self._oriented(view, patches), view.boxes(boxes), torch.zeros(len(boxes), dtype=torch.long)

        with self._patch_batches(reader, grid, placement, what) as collecting, self._autocast(placement):
            return collect_local_context(model, global_maps, oriented(collecting), keep)

    def _oriented(self, view: Dihedral, tensor: torch.Tensor) -> torch.Tensor:
        """``view`` of an ``N×C×H×W`` input, in this inferer's memory layout (the tensor itself for the identity)."""
        if view.is_identity:
            return tensor
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        return view.apply(tensor).contiguous(memory_format=layout)

    def _segment_global(
        self, model: GLNet, config: GLNetConfig, reader: ImageReader, placement: Placement, out: np.ndarray,
        *, probabilities: np.ndarray | None = None,
    ) -> SegmentationResult:
        """The global branch's own mask, upsampled into ``out``; no patch is read."""
        global_image = self._global_input(reader, config.global_size, placement)
        scores = combined_scores([self._view_logits(model, view, self._global_features(model, view, global_image,
                                                                                       placement),
                                                    spatial_size(global_image), placement) for view in self.views])
        upsample_to_labels(scores, out.shape, out=out, probabilities=probabilities)
        return SegmentationResult(mask=out, notes=["the global branch alone (global_only): no patch was refined"])

    def _segment_coarse_to_fine(
        self,
        model: CoarseToFineGLNet,
        config: Any,
        reader: ImageReader,
        placement: Placement,
        out: np.ndarray,
        with_coarse: bool,
        ledger: RowLedger | None,
        *,
        probabilities: np.ndarray | None = None,
        tissue: TissueMask | None = None,
        reuse: EncoderReuse | None = None,
    ) -> SegmentationResult:
        """Coarse mask from the global branch (averaged over the views); GLNet passes over the relaxed boxes only.

        With a ``tissue`` mask the coarse foreground is kept to tissue and the boxes are cut to
        the pieces of tissue they cover (:func:`~glmed.inference.glass.boxes_on_tissue`); inside
        them, patches of glass are skipped as in :meth:`_segment`.
        """
        global_image = self._global_input(reader, config.global_size, placement)
        global_logits = combined_scores([self._view_logits(model, view, self._global_features(model, view,
                                                                                              global_image, placement),
                                                           spatial_size(global_image), placement)
                                         for view in self.views])
        del global_image
        foreground = global_logits.argmax(0).cpu().numpy() != 0
        if tissue is not None:  # foreground on glass is the global branch's mistake
            foreground &= tissue.on_grid(foreground.shape)
        min_size = patch_size_for(reader.size, (config.patch_size, config.patch_size))
        boxes = coarse_to_fine_boxes(foreground, reader.size, config.target_ratio, min_size, config.per_component,
                                     config.min_component)
        if tissue is not None:
            boxes = boxes_on_tissue(boxes, tissue, min_size, round(TISSUE_BOX_MARGIN * config.patch_size))
        if not boxes:
            found = ("no foreground" if not foreground.any() else
                     f"foreground only in specks smaller than min_component={config.min_component:g}")
            if tissue is not None:  # the coarse mask's answers on glass are no answers: the mask is background
                coarse = upsample_to_labels(global_logits, reader.size) if with_coarse else None
                fill_outside(out, [], 0)
                if probabilities is not None:
                    fill_outside(probabilities, [], 0 if config.num_classes == 2 else 255)
                note = f"the global branch found {found} on the tissue, so nothing was refined: the mask is background"
                return SegmentationResult(mask=out, coarse=coarse, notes=[note])
            note = f"the global branch found {found}, so nothing was refined: the mask is its coarse prediction"
            return SegmentationResult(mask=out, coarse=_coarse_into(global_logits, out, with_coarse, probabilities),
                                      notes=[note])
        coarse = upsample_to_labels(global_logits, reader.size) if with_coarse else None
        # inside the boxes (or those a resumed run had grown them to), a resumed run keeps what it wrote
        kept = remembered_boxes(ledger, config.grow_boxes) or boxes
        fill_outside(out, kept, 0)
        if probabilities is not None:  # background by rule: sure of it (no foreground; class 0 wins)
            fill_outside(probabilities, kept, 0 if config.num_classes == 2 else 255)
        glass = [0]  # patches of glass skipped in every box refined, grown ones included

        def refine_box(box: Box) -> tuple[int, int]:
            view = out[box[0] : box[2], box[1] : box[3]]
            sure = None if probabilities is None else probabilities[box[0] : box[2], box[1] : box[3]]
            part = self._segment(model, config, RegionReader(reader, box), placement, view, False, ledger, box,
                                 probabilities=sure, tissue=tissue, reuse=reuse)
            glass[0] += part.patches_glass
            return part.patches, part.patches_skipped

        patches = skipped = 0
        for box in boxes:
            refined, passed = refine_box(box)
            patches, skipped = patches + refined, skipped + passed
        growth = grow_boxes(out, boxes, reader.size, config.grow_boxes, refine_box, min_size, ledger)
        return SegmentationResult(mask=out, coarse=coarse, boxes=growth.boxes, patches=patches + growth.patches,
                                  patches_skipped=skipped + growth.patches_skipped, patches_glass=glass[0],
                                  notes=growth.notes())

    def _stitch_patches(
        self, model: GLNet, reader: ImageReader, grid: PatchGrid,
        views: list[tuple[Dihedral, dict[str, torch.Tensor] | None]],
        placement: Placement,
        out: np.ndarray,
        start_row: int = 0,
        on_rows_written: Callable[[int], None] | None = None,
        refined: np.ndarray | None = None,
        global_logits: list[torch.Tensor] | None = None,
        glass: np.ndarray | None = None,
        *,
        probability_out: np.ndarray | None = None,
        encoded: EncoderStore | None = None,
    ) -> None:
        """Every patch of ``grid``'s probabilities, averaged into ``out`` (and ``probability_out``) in grid order.

        The patches ``refined`` marks (all by default) go through the local (and aggregation)
        heads, in batches of the refined ones only, once per view with that view's global maps
        (``views``: each transform and its maps, None without a global branch); the patches of
        ``glass`` (none by default; never refined) answer background with certainty; the others take
        ``global_logits`` (one ``K×h×w`` map per view, turned back to the region's orientation)
        sampled at their windows, averaged over the views. The probabilities are averaged into the
        rows of ``out`` from ``start_row`` down. A batch whose encoder maps the collect pass kept in
        ``encoded`` takes them rather than running the encoder again.
        """
        if not len(grid):
            return
        if refined is None:
            refined = np.ones(len(grid), dtype=bool)
        merger = RowBandMerger(out, model.config.num_classes, grid.boxes, start_row, on_rows_written, probability_out)
        patch_size = grid.patch_size
        local_grid = PatchGrid(grid.image_size, grid.boxes[refined])
        if glass is None:
            glass = np.zeros(len(grid), dtype=bool)
        skipped_boxes = grid.normalized()[~refined & ~glass]
        if len(skipped_boxes) and global_logits is None:
            raise ValueError("patches that skip the local branch need the global branch's logits")
        answers_from_global = (mean_answers([global_answers(logits, skipped_boxes, patch_size, self.batch_size)
                                             for logits in global_logits])
                               if global_logits is not None else iter(()))
        if glass.any():
            background = background_answer(model.config.num_classes, patch_size)
            answers_from_global = with_background(glass[~refined], answers_from_global, background)
        reading: contextlib.AbstractContextManager[Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]] = (
            self._patch_batches(reader, local_grid, placement, "segmenting patches") if len(local_grid)
            else contextlib.nullcontext(iter(())))
        with reading as batches:
            refined_answers = self._refined_answers(model, batches, views, placement, patch_size, encoded)
            answers = in_grid_order(refined, refined_answers, answers_from_global)
            for probabilities, box in zip(answers, grid.boxes.tolist(), strict=True):
                merger.add(probabilities, box)
            del probabilities
        merger.finish()

    def _refined_answers(
        self,
        model: GLNet,
        batches: Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]],
        views: list[tuple[Dihedral, dict[str, torch.Tensor] | None]],
        placement: Placement,
        patch_size: Size,
        encoded: EncoderStore | None = None,
    ) -> Iterator[torch.Tensor]:
        """Each patch's ``K×p×p`` probabilities from the local (and aggregation) heads, batch by batch, on the host.

        With several ``views`` (each transform with its global maps), each batch runs once per
        view, on the transformed patches at the transformed boxes; the probabilities are turned
        back and averaged over the views before they leave the device. Encoder maps kept in
        ``encoded`` under a batch's view and pixel boxes are taken instead of running the encoder.
        """
        (first_view, first_maps), others = views[0], views[1:]
        for pixel_boxes, host_boxes, patches in batches:
            kept = None if encoded is None else encoded.take(batch_key(first_view, pixel_boxes))
            total = first_view.undo(self._local_probabilities(
                model, self._oriented(first_view, patches), first_view.boxes(host_boxes), first_maps, placement,
                first_view.size(patch_size), encoded=kept))
            for view, global_maps in others:
                kept = None if encoded is None else encoded.take(batch_key(view, pixel_boxes))
                total = total + view.undo(self._local_probabilities(
                    model, self._oriented(view, patches), view.boxes(host_boxes), global_maps, placement,
                    view.size(patch_size), encoded=kept))
            del kept
            del patches  # before the next batch's pass, not after it
            if others:
                total = total / len(views)
            probabilities = total.cpu()
            del total
            yield from probabilities
            del probabilities

    def _local_probabilities(
        self,
        model: GLNet,
        patches: torch.Tensor,
        host_boxes: torch.Tensor,
        global_maps: dict[str, torch.Tensor] | None,
        placement: Placement,
        patch_size: Size,
        encoded: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """One batch's ``N×K×p×p`` float32 probabilities from the local (and aggregation) heads, on the device.

        ``encoded``: these patches' encoder maps from the collect pass, if kept.
        """
        host_index = torch.zeros(len(host_boxes), dtype=torch.long)
        with self._autocast(placement):
            # Boxes and index stay on the host: the crops' windows are placed there
            # (glmed.models.crop_convolution), so nothing waits for the device.
            local_maps = model.local_features(patches, global_maps, host_boxes, host_index, encoded=encoded)
            del encoded
            if global_maps is None:
                logits = model.local_logits(local_maps, patch_size)
                del local_maps
            else:
                local_final = local_maps[FINAL]
                del local_maps  # the shared maps are spent: only the final map goes on
                logits = model.aggregated_logits_at_boxes(local_final, global_maps, host_boxes, host_index, patch_size)
                del local_final
        del patches
        return logits.float().softmax(dim=1)

    def _autocast(self, placement: Placement) -> contextlib.AbstractContextManager[Any]:
        """The forward passes' autocast context for ``amp`` on the placement's device (a no-op when off)."""
        dtype = AMP_MODES[self.amp]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(placement.device.type, dtype=dtype)

    def _global_input(self, reader: ImageReader, side: int, placement: Placement) -> torch.Tensor:
        view = reader.resized((side, side))
        image = to_model_input(view, self.normalization, name=reader.name)[None]
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        return placement.put(image)

    def _prepare_pixels(self, pixels: np.ndarray, name: str, pin: bool = False) -> torch.Tensor:
        """``N×H×W×C`` pixels as normalised ``N×C×H×W`` float32 input on the host, in this inferer's layout.

        ``pin`` page-locks them, so a copy to the GPU need not wait.
        """
        tensor = to_model_input(pixels, self.normalization, name=name)
        if self.channels_last:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        return tensor.pin_memory() if pin else tensor

    @contextlib.contextmanager
    def _patch_batches(
        self, reader: ImageReader, grid: PatchGrid, placement: Placement, what: str
    ) -> Iterator[Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]]:
        """Batches of ``(pixel boxes, boxes as fractions, normalised patches)``, for a ``with`` block.

        The patches are placed like the model; the fractions stay on the host (the caller sends
        them where they are needed). Each patch region is read once. The next batch is read and
        normalised on a background thread (:func:`~glmed.inference.execution.read_ahead`) while the caller computes the
        current one; leaving the block waits for that thread, so ``reader`` may be closed after.
        """
        normalized = torch.tensor(grid.normalized(), dtype=torch.float32)
        pin = placement.device.type == "cuda"

        def prepared() -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
            for batch in iter_patch_batches(reader, grid.boxes, self.batch_size):
                pixels = self._prepare_pixels(batch.pixels, reader.name, pin)
                yield batch.boxes, normalized[batch.start : batch.start + len(batch.boxes)], pixels

        with execution.read_ahead(prepared(), execution.PREFETCH) as ready:
            batches: Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]] = ready
            if self.progress:
                from glmed.progress import progress_bar

                total = -(-len(grid) // self.batch_size)
                batches = progress_bar(ready, total=total, desc=f"{reader.name}: {what}", unit="batch", leave=False)
            yield (
                (pixel_boxes, boxes, pixels.to(device=placement.device, dtype=placement.dtype, non_blocking=pin))
                for pixel_boxes, boxes, pixels in batches
            )


def predict(
    model: GLNet | Sequence[GLNet],
    image: ImageLike,
    *,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    normalization: Normalization = DEFAULT_NORMALIZATION,
    progress: bool = False,
    out: np.ndarray | None = None,
    with_coarse: bool = True,
    thumbnail: bool = True,
    overlap: int | None = None,
    target_ratio: float | None = None,
    per_component: bool | None = None,
    min_component: float | None = None,
    grow_boxes: int | None = None,
    global_only: bool = False,
    amp: str | None = None,
    channels_last: bool = DEFAULT_CHANNELS_LAST,
    refine: str = DEFAULT_REFINE,
    margin: float | None = DEFAULT_MARGIN,
    max_memory: str | int | float | None = None,
    finish: str | None = None,
    keep_regions_above: int | None = None,
    tta: str | None = None,
    reuse_encoder: bool | None = None,
) -> SegmentationResult:
    """Segment a whole image of any size with ``model``; returns a full-size mask and more.

    Args:
        model: a :class:`~glmed.models.glnet.GLNet` (its config sets the global size,
            patch size and overlap it was trained with) or a
            :class:`~glmed.models.coarse_to_fine.CoarseToFineGLNet`, which refines only
            its relaxed foreground boxes and lists them in ``result.boxes``. Several models
            of one architecture (e.g. a run's best checkpoints, :func:`glmed.load_checkpoints`)
            predict as one: the mean of their probabilities, per patch, and for coarse-to-fine
            one set of boxes from their mean coarse probabilities, refined by every model
            (:mod:`glmed.models.ensemble`; each model adds its compute).
        image: an ``H×W×C`` array, a path to any format glmed reads, or an open reader.
        batch_size: patches per forward pass; bounds device memory. 4 by default; with
            ``max_memory``, the most it may choose (the budget may lower it, never raise it).
        device: where to run; the model's device by default.
        normalization: pixel scaling, as in training (by pixel type, ImageNet statistics, by default).
        progress: show a progress bar.
        out: an ``H×W`` array to write the mask into, e.g. a :class:`numpy.memmap` when the
            mask would not fit in memory (see :func:`glmed.inference.slide.predict_to_tiff`).
        with_coarse: also return the global branch's own mask at full size (in memory).
        thumbnail: keep a small copy of the image in ``result.thumbnail`` for display.
        overlap: minimum overlap between patches for this prediction (the model's by default).
        target_ratio: coarse-to-fine's foreground : background wanted in a box, for this
            prediction (the model's by default; see
            :class:`~glmed.models.coarse_to_fine.CoarseToFineConfig`).
        per_component: coarse-to-fine's box per connected component rather than one box,
            for this prediction (the model's by default).
        min_component: coarse-to-fine: coarse foreground regions smaller than this get no box
            (specks): image pixels when at least 1, a fraction of the image's area below 1; the
            model's by default (0: every region).
        grow_boxes: coarse-to-fine: rounds of box growth. Where the refined mask runs into a side
            of its box that is not the image's border, that side moves out by half the box's extent
            (at least a patch) and the grown box is refined again, until the mask is clear of its
            sides, the box reaches the border, or this many rounds have run
            (:mod:`glmed.inference.box_growth`). ``result.boxes`` are the grown boxes; ``result.notes``
            says what grew, and which sides still cut the mask. The model's by default (0: off; 2
            suggested for trained models).
        global_only: the global branch's mask alone, upsampled (no patch is read); what a
            global training stage is validated with.
        amp: ``"bf16"`` runs the forward passes under bfloat16 autocast (CPU or CUDA), with
            probabilities and their averaging in float32; ``"off"`` by default (see
            :data:`~glmed.inference.execution.DEFAULT_AMP` for the measured reason), unless ``max_memory`` needs bf16.
        channels_last: weights and inputs in channels-last memory for this call; off by
            default (see :data:`~glmed.inference.execution.DEFAULT_CHANNELS_LAST` for the measured figures).
        refine: ``"box"`` (default) runs the local branch on every patch of the image, or of each
            coarse-to-fine box; ``"uncertain"`` only on the patches where the global branch's
            first pass of that region is unsure (more than one class around the patch, or, with a
            ``margin``, a top-class probability under ``1 - margin``), the others taking the global
            branch's answer.
            ``result.patches`` counts the refined patches, ``result.patches_skipped`` the others.
            See :class:`GlobalLocalInferer` for what changes for bidirectional models.
        margin: with ``refine="uncertain"``, also refine where the global branch's top-class
            probability is under ``1 - margin``; in (0, 1). None by default: the one-class rule
            alone, as focal-trained models are rarely sure (:data:`~glmed.inference.refinement.DEFAULT_MARGIN`).
        max_memory: a budget for the prediction's peak memory, e.g. ``"1GB"``, ``"512MB"``,
            ``"1.5GiB"`` or a number of bytes. The batch size is then the largest whose estimated
            peak stays under it (at most ``batch_size`` when given, and the image's patch count),
            from the memory of the model's passes measured on this device before the prediction
            (a few patches' worth of compute, once per model and device in a process; see
            :mod:`glmed.inference.memory_budget`). bf16 autocast is switched on only when float32
            cannot fit one patch at a time, ``amp`` is unset and the device runs bfloat16
            natively. ``result.notes`` says what was chosen and its estimate. A budget below the
            estimate at batch 1 raises :class:`ValueError` naming it, before any patch is read.
            On the CPU the budget covers the process's memory (the mask included); on a GPU, the
            GPU's. Not with ``global_only``, which reads no patches.
        finish: ``"lesion"`` finishes the mask as the ISIC task defines a lesion: the largest connected
            foreground region, its holes filled (:func:`~glmed.inference.finishing.finish_lesion_mask`);
            ``result.notes`` says what it changed. Two-class models only (refused otherwise); not for
            slides. None (default): the mask as the network made it.
        keep_regions_above: with ``finish``, also keep other regions of more than this many pixels.
        tta: test-time augmentation, probabilities averaged over views of the image: ``"flips"``
            (the image, its horizontal and vertical flips: ×3 compute) or ``"dihedral"`` (also the
            90° rotations and other reflections: ×8); see :class:`GlobalLocalInferer`. None by default.
            ``result.notes`` says which views ran.
        reuse_encoder: bidirectional models: the final pass takes each patch's encoder maps from
            the collect pass instead of computing them again: the same mask bit for bit, about a
            fifth less time with ResNet50, for memory held between the passes (31 MB per 508-pixel
            patch in float32; 4.7 GB for a 6748×4499 image). None (default): off, unless
            ``max_memory`` is set and they fit; ``result.notes`` says what was kept (see
            :class:`GlobalLocalInferer`).

    The model is left in the mode, on the device and in the memory layout it was in.
    """
    inferer = GlobalLocalInferer(batch_size=batch_size, device=device, normalization=normalization, progress=progress,
                                 amp=amp, channels_last=channels_last, refine=refine, margin=margin, overlap=overlap,
                                 target_ratio=target_ratio, per_component=per_component, min_component=min_component,
                                 grow_boxes=grow_boxes, max_memory=max_memory, finish=finish,
                                 keep_regions_above=keep_regions_above, tta=tta, reuse_encoder=reuse_encoder)
    return inferer(ensemble(model), image, out=out, with_coarse=with_coarse, thumbnail=thumbnail,
                   global_only=global_only)


def _coarse_into(
    global_logits: torch.Tensor, out: np.ndarray, with_coarse: bool, probabilities: np.ndarray | None = None
) -> np.ndarray | None:
    """Write the global branch's mask, upsampled once, into ``out`` (and ``probabilities``); a copy when asked for."""
    upsample_to_labels(global_logits, out.shape, out=out, probabilities=probabilities)
    return np.array(out) if with_coarse else None
