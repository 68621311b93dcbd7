"""``glmed predict CHECKPOINT IMAGE OUT``: segment an image, a whole slide or a folder of images.

Several checkpoints (``glmed predict A.pt B.pt IMAGE OUT``), or a run folder with ``--best K``
(its K best kept checkpoints), predict as one, averaging their probabilities
(:mod:`glmed.models.ensemble`); a folder run's record then names every checkpoint.

``OUT`` ending in ``.tif``/``.tiff`` streams the mask to a tiled pyramidal TIFF
(:func:`glmed.inference.slide.predict_to_tiff`: any size, flat memory, resumes an interrupted run,
finds the tissue first and writes patches of glass as background without reading them, unless
``--no-tissue-mask``);
``.png`` writes it in memory, as 0/255 for a two-class model (the ISIC format) or as class
indices otherwise. With a folder of images, ``OUT`` is a folder: each image gets a mask named for
the ISIC scorer (``ISIC_0000000.jpg`` → ``ISIC_0000000_segmentation.png``, others
``NAME_mask.png``). Hidden files (``.DS_Store``) and files named like masks
(``*_segmentation.png``, ``*_mask.png``) are skipped, and the run says how many. The folder
keeps a record (:mod:`glmed.inference.provenance`) of the checkpoint and options that made
each of its masks: run again with the same ones and the masks already made are
kept, so a stopped run resumes; with another checkpoint or other options every mask is
recomputed, and the run says what changed. An unreadable image is reported at the end, by
name, without stopping the others. Options are checked before any work. Exit status 1 and
the reasons when anything failed.

Each mask's record is a dot-file beside it (``OUT/.NAME.glmed-run.json``), so processes that share
the folder (``--part K/N`` on several machines, or ``torchrun --nproc_per_node N -m glmed.cli
predict ...``, each taking share ``RANK + 1`` of ``WORLD_SIZE``) never overwrite each other's.
A folder run ends by writing ``OUT/summary.csv``, a line per image: size, µm/px, tissue and
foreground areas, patches, seconds, and ``done``, ``skipped`` (kept from an earlier run),
``failed`` (with the error) or ``pending`` (another share, not finished yet)
(:mod:`glmed.cli.summary`). With a ``.tif`` mask, ``--thumbnail`` and ``--geojson`` add an outline
picture and QuPath annotations, ``--probabilities`` a pyramid of how sure the mask is, and
``--mpp UM`` segments at UM µm per pixel, read from the slide's nearest pyramid level
(:func:`glmed.inference.slide.predict_to_tiff`); by default at the µm/px the checkpoint was
trained at, when it records one. Folder runs show a bar over the images and, for slides, one over
each slide's patch batches (``--quiet``: none).
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from glmed.inference.provenance import RunRecord
    from glmed.inference.result import SegmentationResult
    from glmed.inference.slide import SlidePrediction

EXIT_FAILED = 1
TIFF_SUFFIXES = (".tif", ".tiff")
#: Files a folder run segments; anything else in the folder (licences, CSVs) is left alone.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".svs", ".ndpi", ".mrxs", ".scn", ".nii", ".nii.gz")
_ISIC_ID = re.compile(r"^ISIC_[0-9]{7}$")
#: Names (without extension) of masks, not images: ISIC truth masks and the masks glmed writes.
_MASK_NAME = re.compile(r"(_segmentation|_mask|_attribute_[a-z_]+)$", re.IGNORECASE)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``predict`` subcommand's arguments."""
    parser.add_argument("checkpoint", type=Path, nargs="+", metavar="CHECKPOINT",
                        help="a checkpoint a recipe wrote (RUN_DIR/checkpoints/best.pt), or a run folder (RUN_DIR: "
                             "its best.pt, or with --best K its K best kept checkpoints); several predict as one, "
                             "averaging their probabilities (models of one architecture)")
    parser.add_argument("image", type=Path, metavar="IMAGE",
                        help="an image or slide (JPEG/PNG, TIFF, SVS/NDPI/MRXS with glmed[wsi], NIfTI), or a folder")
    parser.add_argument("out", type=Path, metavar="OUT",
                        help="the mask to write (.tif/.tiff pyramidal and streamed, or .png); a folder for a folder")
    parser.add_argument("--format", choices=["png", "tif"], default="png",
                        help="mask format in a folder run (default png, what the ISIC scorer reads)")
    parser.add_argument("--batch-size", type=int, default=None, metavar="N",
                        help="patches per forward pass (default 4; with --max-memory, the most it may choose)")
    parser.add_argument("--max-memory", default=None, metavar="SIZE",
                        help="a budget for inference's peak memory, e.g. 1GB, 512MB, 1.5GiB or bytes: the batch size "
                             "(and bf16, where float32 cannot fit and the device runs it natively) is chosen from the "
                             "model's passes measured first, and printed; a budget too small for one patch at a time "
                             "is refused. On a CPU it covers the process's memory, on a GPU the GPU's")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: CUDA when available)")
    parser.add_argument("--best", type=int, default=None, metavar="K",
                        help="with a run folder as CHECKPOINT: an ensemble of its K best validated checkpoints (a run "
                             "trained with --keep-best K or more), averaging their probabilities")
    parser.add_argument("--grow-boxes", type=int, default=None, metavar="N",
                        help="coarse-to-fine: up to N rounds of growing a box side the refined mask runs into (not "
                             "at the image border) and refining the grown box again; default: the model's (0: off)")
    parser.add_argument("--min-component", type=float, default=None, metavar="SIZE",
                        help="coarse-to-fine: coarse regions smaller than SIZE get no box: image pixels (>= 1) or a "
                             "fraction of the image (< 1); default: the model's (0: every region)")
    parser.add_argument("--tile", type=int, default=512, help="TIFF tile side, a multiple of 16")
    parser.add_argument("--max-value", type=float, default=None, metavar="V",
                        help="the value of a full-intensity pixel, for images whose type does not say it (float "
                             "pixels of 0-255, 16-bit signed CT); default: from the type (uint8 255, uint16 65535, "
                             "float 1)")
    parser.add_argument("--amp", choices=["off", "bf16"], default=None,
                        help="bfloat16 autocast of the forward passes (probabilities stay float32); default off: on "
                             "CPUs without native bfloat16 it is many times slower (docs/benchmarks.md)")
    parser.add_argument("--channels-last", action="store_true",
                        help="channels-last weights and inputs (faster convolutions on some CPUs and GPUs; the "
                             "mask can differ from the default layout's in a few pixels)")
    parser.add_argument("--refine", choices=["box", "uncertain"], default=None,
                        help="where the local branch runs: every patch of the image or of each coarse-to-fine box "
                             "(box, the default), or only the patches where the global branch is unsure (uncertain); "
                             "the others take the global branch's answer")
    parser.add_argument("--margin", type=float, default=None, metavar="M",
                        help="with --refine uncertain: also refine where the global branch's top-class probability "
                             "is under 1 - M; in (0, 1); default none: a patch is refined where more than one class "
                             "meets around it (focal-trained models are rarely sure enough for a probability rule)")
    parser.add_argument("--tta", choices=["flips", "dihedral"], default=None,
                        help="test-time augmentation: probabilities averaged over the image and its horizontal and "
                             "vertical flips (flips, 3× the compute), or also its 90° rotations and other reflections "
                             "(dihedral, 8×, for slides and images without an up); default none")
    parser.add_argument("--reuse-encoder", action=argparse.BooleanOptionalAction, default=None,
                        help="bidirectional models: keep each patch's encoder maps from the collect pass for the "
                             "final pass (the same mask, about a fifth faster with ResNet50, for memory held between "
                             "the passes: 31 MB per 508-px patch in float32); default off, unless --max-memory finds "
                             "room for it")
    parser.add_argument("--finish", action="store_true",
                        help="ISIC finishing of two-class masks: keep the largest connected lesion region and fill "
                             "its holes, as the ISIC task defines a lesion (not for .tif outputs: slides have many "
                             "regions)")
    parser.add_argument("--keep-regions-above", type=int, default=None, metavar="N",
                        help="with --finish: also keep other regions of more than N pixels")
    parser.add_argument("--no-resume", action="store_true",
                        help="start afresh: recompute masks a folder run already wrote, and interrupted TIFFs")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--classes", default=None, metavar="NAMES",
                        help="class names, background first, comma-separated (background,tumour): recorded in the "
                             "TIFF mask's metadata and the GeoJSON; default background,foreground for two classes")
    parser.add_argument("--thumbnail", nargs="?", const="", default=None, metavar="PATH",
                        help="with a .tif mask, also write a PNG of the slide's overview with the predicted regions "
                             "outlined; PATH for one slide, else NAME_thumbnail.png beside each mask")
    parser.add_argument("--geojson", nargs="?", const="", default=None, metavar="PATH",
                        help="with a .tif mask, also write the predicted regions as QuPath annotations (GeoJSON "
                             "polygons in level-0 pixels, µm² areas when the slide says its µm/px); PATH for one "
                             "slide, else NAME.geojson beside each mask")
    parser.add_argument("--probabilities", nargs="?", const="", default=None, metavar="PATH",
                        help="with a .tif mask, also write how sure it is as a greyscale pyramidal TIFF, 0-255: the "
                             "foreground's probability for two classes, the winning class's for more; PATH for one "
                             "slide, else NAME_probabilities.tif beside each mask")
    parser.add_argument("--mpp", type=float, default=None, metavar="UM",
                        help="with a .tif mask, segment at UM µm per pixel (0.5 for 20x): patches are read from the "
                             "slide's pyramid level nearest it and resampled, and the mask is written at it (default: "
                             "the µm/px the checkpoint was trained at, when it records one and the slide says its "
                             "own; else level 0)")
    tissue = parser.add_mutually_exclusive_group()
    tissue.add_argument("--tissue-mask", action="store_true",
                        help="with a .tif mask, find the tissue and skip patches of glass even when the image does "
                             "not say its µm/px (by default only slides that say it are taken for tissue on glass)")
    tissue.add_argument("--no-tissue-mask", action="store_true",
                        help="with a .tif mask, segment every patch: by default, on slides that say their µm/px, "
                             "the tissue is found first (Otsu on colour saturation) and patches of glass only are "
                             "written as background without being read")
    parser.add_argument("--part", default=None, metavar="K/N",
                        help="with a folder: segment only share K of N (1-based) of its sorted images, images K, "
                             "K+N, K+2N, ...: run N processes (machines) with K = 1..N and they split the folder "
                             "without overlap. Under torchrun (RANK and WORLD_SIZE set) the share is RANK+1 of "
                             "WORLD_SIZE unless --part is given, and each process takes the GPU cuda:LOCAL_RANK")


def run(args: argparse.Namespace) -> int:
    """Load the network, segment the image(s) and write the mask(s); returns the exit status."""
    problem = _option_problem(args)
    if problem is not None:
        return _fail(problem)
    folder_run = args.image.is_dir()
    notes: list[str] = []
    if folder_run:
        found = _folder_jobs(args.image, args.out, args.format)
        if isinstance(found, str):
            return _fail(found)
        jobs, notes = found
    elif args.out.suffix.lower() not in TIFF_SUFFIXES + (".png",):
        return _fail(f"{args.out}: the output must end in .tif, .tiff or .png")
    elif not args.out.parent.is_dir():
        return _fail(f"{args.out}: the folder {args.out.parent} does not exist")
    else:
        jobs = [(args.image, args.out)]
    import torch

    from glmed.models.checkpoint import load_model
    from glmed.models.ensemble import ensemble

    device = args.device or _default_device(torch.cuda.is_available())
    try:
        models = [load_model(path, map_location=device).to(device) for path in _checkpoint_files(args)]  # once
        model = ensemble(models)
    except (OSError, ValueError) as error:
        return _fail(str(error))
    if args.finish and model.config.num_classes != 2:
        return _fail(f"--finish keeps one lesion region of a two-class mask; {_shown_checkpoints(args)} has "
                     f"{model.config.num_classes} classes, whose other classes it would erase: drop --finish")
    if args.classes is not None and len(_class_names(args) or []) != model.config.num_classes:
        return _fail(f"--classes names {len(_class_names(args) or [])} classes, the checkpoint's model has "
                     f"{model.config.num_classes} (background included)")
    for note in notes:
        print(note)
    if not folder_run:
        try:
            print(_predict_one(model, args.image, args.out, device, args, progress=not args.quiet)[0])
        # missing/bad files, unreadable images, images the network cannot take (RuntimeError from torch)
        except (OSError, ValueError, RuntimeError) as error:
            return _fail(_failure_line(args.image, error))
        return 0
    return _folder_run(model, jobs, device, args)


def _folder_run(model, jobs: list[tuple[Path, Path]], device: str, args: argparse.Namespace) -> int:
    """Segment this process's share of a folder's images, record each beside its mask, write summary.csv."""
    import dataclasses
    import time

    import torch

    from glmed.cli.parts import share, this_part
    from glmed.cli.summary import failed_row, result_row, write_summary
    from glmed.inference.provenance import RunRecord, record_path

    try:
        part = this_part(args.part)
    except ValueError as error:
        return _fail(str(error))
    mine = jobs if part is None else share(jobs, part[0])
    if part is not None:
        print(f"part {part[0][0]}/{part[0][1]} (from {part[1]}): {len(mine)} of the {len(jobs)} image(s) in "
              f"{args.image}")
    record, todo, rows = _resume(args, mine, torch.device(device).type)
    failures = []
    for image, out in _progress(todo, args, True):
        began = time.perf_counter()
        earlier = RunRecord.load(out) if out.exists() else None
        # another run's record must not outlive its mask: were this run killed once the new mask is in place,
        # a rerun with that other checkpoint would keep this one's mask
        record_path(out).unlink(missing_ok=True)
        try:
            # a slide's own bars (patch batches, tiles) under the folder's; an image's would only flicker
            slide_bars = not args.quiet and out.suffix.lower() in TIFF_SUFFIXES
            line, result = _predict_one(model, image, out, device, args, progress=slide_bars)
        # missing/bad files, unreadable images, images the network cannot take (RuntimeError from torch)
        except (OSError, ValueError, RuntimeError) as error:
            failures.append(_failure_line(image, error))
            if out.exists() and (earlier is None or not earlier.same_run(record)):
                out.unlink()  # another run's mask: it must not pass for this checkpoint's
                failures[-1] += f" (removed {out.name}, which an earlier run had left)"
            rows[out] = failed_row(image, out, failures[-1], time.perf_counter() - began)
        else:
            print(line)
            rows[out] = result_row(image, out, result, time.perf_counter() - began)
        # beside each mask, right after it, so a killed run resumes with what is done
        dataclasses.replace(record, summary=rows[out]).save(out)
    summary = write_summary(args.out, _summary_rows(jobs, rows, record))
    print(f"summary in {summary}: {len(mine) - len(failures)} of {len(mine)} image(s) have their mask"
          + ("" if part is None else f" in part {part[0][0]}/{part[0][1]}"))
    if failures:
        return _fail(f"{len(failures)} of {len(todo)} image(s) failed:\n  " + "\n  ".join(failures))
    return 0


def _summary_rows(jobs: list[tuple[Path, Path]], rows: dict[Path, dict], record: RunRecord) -> list[dict]:
    """A line per image of the folder: this process's own, else what another process's record beside it says."""
    from glmed.cli.summary import pending_row
    from glmed.inference.provenance import RunRecord

    lines = []
    for image, out in jobs:
        if out in rows:
            lines.append(rows[out])
            continue
        other = RunRecord.load(out)
        done = other is not None and other.same_run(record) and other.summary.get("status") in ("done", "failed")
        lines.append(dict(other.summary) if done and other is not None else pending_row(image, out))
    return lines


def _default_device(cuda: bool) -> str:
    """CUDA when there is one (under torchrun, the process's own GPU, ``cuda:LOCAL_RANK``), else the CPU."""
    import os

    if not cuda:
        return "cpu"
    local_rank = os.environ.get("LOCAL_RANK")
    return f"cuda:{int(local_rank)}" if local_rank is not None and local_rank.isdigit() else "cuda"


def _option_problem(args: argparse.Namespace) -> str | None:
    """The first option out of range, as the line to print, or None; checked before any work."""
    if args.batch_size is not None and args.batch_size < 1:
        return f"--batch-size must be at least 1, got {args.batch_size}"
    if args.max_memory is not None:
        from glmed.inference.memory_budget import parse_memory

        try:
            parse_memory(args.max_memory, option="--max-memory")
        except ValueError as error:
            return str(error)
    if args.tile < 16 or args.tile % 16:
        return f"--tile must be a positive multiple of 16, got {args.tile}"
    if args.max_value is not None and not args.max_value > 0:
        return f"--max-value must be positive, got {args.max_value}"
    if args.margin is not None and not 0 < args.margin < 1:
        return f"--margin must be in (0, 1), got {args.margin}"
    if args.margin is not None and args.refine != "uncertain":
        return "--margin applies only with --refine uncertain (it says which patches to skip)"
    if args.best is not None and args.best < 1:
        return f"--best must be at least 1, got {args.best}"
    if args.best is not None and not any(path.is_dir() for path in args.checkpoint):
        return "--best K picks a run folder's K best checkpoints; give the run folder (RUN_DIR) as CHECKPOINT"
    if args.grow_boxes is not None and args.grow_boxes < 0:
        return f"--grow-boxes must be a number of rounds >= 0, got {args.grow_boxes}"
    if args.min_component is not None and not args.min_component >= 0:
        return f"--min-component must be >= 0 (pixels, or a fraction of the image below 1), got {args.min_component}"
    problem = _finish_problem(args) or _slide_output_problem(args) or _part_problem(args)
    if problem is not None:
        return problem
    if args.device is not None:
        from glmed.models.checkpoint import device_problem

        problem = device_problem(args.device)
        if problem is not None:
            return f"--device {args.device}: {problem}"
    return None


def _finish_problem(args: argparse.Namespace) -> str | None:
    """Why ``--finish``/``--keep-regions-above`` cannot apply to this run, or None."""
    if args.keep_regions_above is not None and not args.finish:
        return "--keep-regions-above applies only with --finish (it says which other regions finishing keeps)"
    if args.keep_regions_above is not None and args.keep_regions_above < 0:
        return f"--keep-regions-above must be a pixel count >= 0, got {args.keep_regions_above}"
    if args.finish and _tiff_output(args):
        return ("--finish is for lesion masks written as PNG: a .tif output streams a slide, whose many regions "
                "finishing (one region, no holes) would erase; drop --finish or write .png")
    return None


def _slide_output_problem(args: argparse.Namespace) -> str | None:
    """Why ``--thumbnail``/``--geojson``/``--probabilities``/``--classes``/``--mpp`` cannot be honoured, or None."""
    flags = (("--thumbnail", args.thumbnail), ("--geojson", args.geojson), ("--probabilities", args.probabilities))
    asked = [flag for flag, value in flags if value is not None]
    if args.image.is_dir():
        given = [flag for flag, value in flags if value]
        if given:
            return f"{' and '.join(given)} take no PATH with a folder of images: each goes beside its mask"
        if asked and args.format != "tif":
            return f"{' and '.join(asked)} need TIFF masks: add --format tif"
    elif asked and args.out.suffix.lower() not in TIFF_SUFFIXES:
        return f"{' and '.join(asked)} need a .tif mask (OUT ending in .tif or .tiff), got {args.out}"
    if args.mpp is not None:
        if not (math.isfinite(args.mpp) and args.mpp > 0):
            return f"--mpp is µm per pixel, a positive number (0.5 for 20x), got {args.mpp}"
        tiff = args.format == "tif" if args.image.is_dir() else args.out.suffix.lower() in TIFF_SUFFIXES
        if not tiff:
            return ("--mpp segments slides, whose masks are .tif: "
                    + ("add --format tif" if args.image.is_dir() else f"OUT must end in .tif or .tiff, got {args.out}"))
    for flag, given in (("--tissue-mask", args.tissue_mask), ("--no-tissue-mask", args.no_tissue_mask)):
        if given and not _tiff_output(args):
            return (f"{flag} applies to .tif masks (slides), the only ones a tissue mask skips patches of; "
                    "PNG masks always segment every patch: drop it")
    if args.classes is not None and not all(name.strip() for name in args.classes.split(",")):
        return f"--classes: comma-separated non-empty names, background first, got {args.classes!r}"
    return None


def _tissue_setting(args: argparse.Namespace) -> bool | None:
    """``predict_to_tiff``'s ``tissue``: forced on or off by the flags, else None (slides that say their µm/px)."""
    return True if args.tissue_mask else (False if args.no_tissue_mask else None)


def _tiff_output(args: argparse.Namespace) -> bool:
    """Whether this run writes TIFF masks (streamed slides) rather than PNG ones."""
    return args.out.suffix.lower() in TIFF_SUFFIXES or (args.image.is_dir() and args.format == "tif")


def _part_problem(args: argparse.Namespace) -> str | None:
    """Why ``--part`` (or torchrun's ``RANK``/``WORLD_SIZE``) cannot split this run, or None."""
    from glmed.cli.parts import this_part

    if not args.image.is_dir():  # one image: nothing to split, whatever torchrun set
        return None if args.part is None else f"--part splits a folder of images; {args.image} is one file"
    try:
        this_part(args.part)
    except ValueError as error:
        return str(error)
    return None


def _class_names(args: argparse.Namespace) -> list[str] | None:
    return None if args.classes is None else [name.strip() for name in args.classes.split(",")]


def _slide_outputs(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """predict_to_tiff's ``classes``, ``thumbnail``, ``geojson``, ``probabilities`` and ``mpp`` for the mask ``out``."""
    options: dict[str, Any] = {"classes": _class_names(args), "mpp": args.mpp}
    if args.thumbnail is not None:
        options["thumbnail"] = Path(args.thumbnail) if args.thumbnail else out.with_name(f"{out.stem}_thumbnail.png")
    if args.geojson is not None:
        options["geojson"] = Path(args.geojson) if args.geojson else out.with_suffix(".geojson")
    if args.probabilities is not None:
        options["probabilities"] = (Path(args.probabilities) if args.probabilities
                                    else out.with_name(f"{out.stem}_probabilities.tif"))
    return options


def _resume(
    args: argparse.Namespace, jobs: list[tuple[Path, Path]], device_type: str
) -> tuple[RunRecord, list[tuple[Path, Path]], dict[Path, dict]]:
    """This run's record, the jobs to do, and the summary lines of the masks kept.

    A mask is kept when the record beside it is this very run's (same checkpoint bytes, same
    options) and it finished; every other mask is recomputed. Prints one line saying how many
    masks are kept, and one for each reason masks already there are recomputed.
    """
    from glmed.inference.inferer import DEFAULT_BATCH_SIZE
    from glmed.inference.provenance import RECORD_NAME, RunRecord, file_digest

    options: dict[str, object] = {"format": args.format, "device": device_type, "max_value": args.max_value}
    if args.max_memory is None:
        options["batch_size"] = DEFAULT_BATCH_SIZE if args.batch_size is None else args.batch_size
    else:  # the batch is chosen per image from the budget (at most --batch-size): the same options, the same batch
        from glmed.inference.memory_budget import parse_memory

        options["max_memory"] = parse_memory(args.max_memory).nbytes
        options["batch_size"] = args.batch_size
    # Named only when set, so folders written before these options existed still resume.
    if args.amp not in (None, "off"):
        options["amp"] = args.amp
    if args.channels_last:
        options["channels_last"] = True
    if args.refine not in (None, "box"):
        from glmed.inference.refinement import DEFAULT_MARGIN

        options["refine"] = args.refine
        options["margin"] = DEFAULT_MARGIN if args.margin is None else args.margin
    if args.tta is not None:
        options["tta"] = args.tta
    if args.finish:
        options["finish"] = "lesion"
        options["keep_regions_above"] = args.keep_regions_above
    if args.format == "tif":
        options["tile"] = args.tile
        if not args.no_tissue_mask:  # named when on: masks made before glass was skipped are recomputed
            options["tissue_mask"] = "skip glass" if args.tissue_mask else "skip glass on slides"
    # what a slide's outputs are, named only when asked for
    for name in ("classes", "thumbnail", "geojson", "probabilities", "mpp"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    if args.grow_boxes is not None:
        options["grow_boxes"] = args.grow_boxes
    if args.min_component is not None:
        options["min_component"] = args.min_component
    files = _checkpoint_files(args)  # one file: its digest, as before ensembles, so older folders resume
    record = RunRecord(checkpoint=",".join(file_digest(path) for path in files),
                       checkpoint_path=", ".join(str(path) for path in files), options=options)
    todo: list[tuple[Path, Path]] = []
    kept: dict[Path, dict] = {}
    unrecorded: list[Path] = []
    others: list[RunRecord] = []
    for image, out in jobs:
        earlier = RunRecord.load(out) if out.exists() and not args.no_resume else None
        if earlier is not None and earlier.same_run(record) and earlier.summary.get("status") == "done":
            kept[out] = {**earlier.summary, "status": "skipped", "error": None}
            continue
        todo.append((image, out))
        if out.exists() and not args.no_resume:
            if earlier is None:
                unrecorded.append(out)
            else:
                others.append(earlier)
    existing = [out for _, out in todo if out.exists()]
    if kept:
        print(f"kept {len(kept)} mask(s) made by this checkpoint with these options in {args.out} "
              "(--no-resume recomputes them)")
    if existing and args.no_resume:
        print(f"recomputing the {len(existing)} mask(s) already in {args.out} (--no-resume)")
    if unrecorded:
        print(f"recomputing the {len(unrecorded)} mask(s) already in {args.out} with no record beside them "
              f"(.NAME{RECORD_NAME}) of which checkpoint and options made them")
    if others:
        print(f"recomputing the {len(others)} mask(s) already in {args.out}, made by another run: "
              + "; ".join(record.differences(others[0])))
    return record, todo, kept


def _checkpoint_files(args: argparse.Namespace) -> list[Path]:
    """The checkpoint files CHECKPOINT names: files as given, a run folder's best (or ``--best K`` best) kept.

    Raises:
        ValueError: a run folder that kept fewer checkpoints than ``--best`` asks for, or none.
    """
    from glmed.training.best_checkpoints import kept_checkpoint_files

    files: list[Path] = []
    for path in args.checkpoint:
        files += kept_checkpoint_files(path, args.best or 1) if path.is_dir() else [path]
    return files


def _shown_checkpoints(args: argparse.Namespace) -> str:
    return ", ".join(str(path) for path in args.checkpoint)


def _failure_line(image: Path, error: BaseException) -> str:
    """One line naming the image and what went wrong with it."""
    message = "; ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__
    return message if image.name in message else f"{image}: {message}"


def _predict_one(
    model, image: Path, out: Path, device: str, args: argparse.Namespace, progress: bool
) -> tuple[str, SlidePrediction | SegmentationResult]:
    """Segment one image into ``out``; returns the line to print and what the prediction returned."""
    from glmed.data.normalize import Normalization
    from glmed.inference.inferer import predict
    from glmed.inference.slide import predict_to_tiff
    from glmed.io.writers import write_mask_png

    options = {"batch_size": args.batch_size, "device": device, "progress": progress,
               "normalization": Normalization(max_value=args.max_value), "max_memory": args.max_memory}
    if args.amp is not None:
        options["amp"] = args.amp
    if args.channels_last:
        options["channels_last"] = True
    if args.refine is not None:
        options["refine"] = args.refine
    if args.margin is not None:
        options["margin"] = args.margin
    if args.tta is not None:
        options["tta"] = args.tta
    if args.reuse_encoder is not None:
        options["reuse_encoder"] = args.reuse_encoder
    if args.grow_boxes is not None:
        options["grow_boxes"] = args.grow_boxes
    if args.min_component is not None:
        options["min_component"] = args.min_component
    result: SlidePrediction | SegmentationResult
    if out.suffix.lower() in TIFF_SUFFIXES:
        result = predict_to_tiff(model, image, out, tile=args.tile, resume=not args.no_resume, **options,
                                 tissue=_tissue_setting(args), **_slide_outputs(args, out))
    else:
        finish = {"finish": "lesion", "keep_regions_above": args.keep_regions_above} if args.finish else {}
        segmentation = predict(model, image, with_coarse=False, thumbnail=False, **options, **finish)
        write_mask_png(out, segmentation.mask, model.config.num_classes)
        result = segmentation
    refined = f", refined {len(result.boxes)} box(es)" if result.boxes else ""
    notes = "".join(f"\nnote: {note}" for note in result.notes)
    patches = f"{result.patches} patch" + ("" if result.patches == 1 else "es")
    if result.patches_skipped:
        patches += f" ({result.patches_skipped} more took the global branch's answer)"
    if result.patches_glass:
        patches += f", {result.patches_glass} of glass skipped"
    return f"wrote {out}: {image.name} segmented with {patches}{refined}{notes}", result


def _folder_jobs(folder: Path, out: Path, mask_format: str) -> tuple[list[tuple[Path, Path]], list[str]] | str:
    """``(image, mask)`` for every image in ``folder`` and lines on what was skipped, or why there is nothing to do.

    Hidden files (``.DS_Store``, macOS's ``._NAME`` copies) and files named like masks
    (``*_segmentation.*``, ``*_mask.*``: a truth mask left beside its image) are skipped.
    """
    from glmed.inference.provenance import RECORD_NAME

    if out.exists() and not out.is_dir():
        return f"{out}: with a folder of images, OUT must be a folder"
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES))
    hidden = [p for p in folder.iterdir() if p.name.startswith(".") and p.name != RECORD_NAME]
    images = [p for p in files if not p.name.startswith(".") and not _MASK_NAME.search(_stem(p))]
    masks = [p for p in files if not p.name.startswith(".") and _MASK_NAME.search(_stem(p))]
    notes = []
    if hidden:
        notes.append(f"skipped {len(hidden)} hidden file(s) in {folder}: {_names(hidden)}")
    if masks:
        notes.append(f"skipped {len(masks)} file(s) in {folder} named like masks, not images: {_names(masks)} "
                     "(rename a file to segment it)")
    if not images:
        skipped = f" (skipped: {'; '.join(notes)})" if notes else ""
        return f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder{skipped}"
    out.mkdir(parents=True, exist_ok=True)
    jobs = []
    for image in images:
        stem = _stem(image)
        name = f"{stem}_segmentation" if _ISIC_ID.match(stem) else f"{stem}_mask"
        jobs.append((image, out / f"{name}.{mask_format}"))
    return jobs, notes


def _stem(path: Path) -> str:
    return path.name[: -len(".nii.gz")] if path.name.lower().endswith(".nii.gz") else path.stem


def _names(paths: list[Path], most: int = 5) -> str:
    names = sorted(p.name for p in paths)
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def _progress(jobs: list, args: argparse.Namespace, show: bool):
    if not show or args.quiet:
        return jobs
    from glmed.progress import progress_bar

    return progress_bar(jobs, desc=f"segmenting {args.image}", unit="image")


def _fail(message: str) -> int:
    print(f"glmed predict: {message}", file=sys.stderr)
    return EXIT_FAILED


