"""``glmed predict CHECKPOINT IMAGE OUT``: segment an image, a whole slide or a folder of images.

``OUT`` ending in ``.tif``/``.tiff`` streams the mask to a tiled pyramidal TIFF
(:func:`glmed.inference.slide.predict_to_tiff`: any size, flat memory, resumes an interrupted run);
``.png`` writes it in memory, as 0/255 for a two-class model (the ISIC format) or as class
indices otherwise. With a folder of images, ``OUT`` is a folder: each image gets a mask named for
the ISIC scorer (``ISIC_0000000.jpg`` → ``ISIC_0000000_segmentation.png``, others
``NAME_mask.png``). Hidden files (``.DS_Store``) and files named like masks
(``*_segmentation.png``, ``*_mask.png``) are skipped, and the run says how many. The folder
keeps a record (``OUT/.glmed-run.json``, :mod:`glmed.inference.provenance`) of the checkpoint
and options that made its masks: run again with the same ones and the masks already made are
kept, so a stopped run resumes; with another checkpoint or other options every mask is
recomputed, and the run says what changed. An unreadable image is reported at the end, by
name, without stopping the others. Options are checked before any work. Exit status 1 and
the reasons when anything failed.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

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
    parser.add_argument("checkpoint", type=Path, metavar="CHECKPOINT",
                        help="a checkpoint a recipe wrote (RUN_DIR/checkpoints/best.pt)")
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
    parser.add_argument("--finish", action="store_true",
                        help="ISIC finishing of two-class masks: keep the largest connected lesion region and fill "
                             "its holes, as the ISIC task defines a lesion (not for .tif outputs: slides have many "
                             "regions)")
    parser.add_argument("--keep-regions-above", type=int, default=None, metavar="N",
                        help="with --finish: also keep other regions of more than N pixels")
    parser.add_argument("--no-resume", action="store_true",
                        help="start afresh: recompute masks a folder run already wrote, and interrupted TIFFs")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


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

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        model = load_model(args.checkpoint, map_location=device).to(device)  # once, not per image
    except (OSError, ValueError) as error:
        return _fail(str(error))
    if args.finish and model.config.num_classes != 2:
        return _fail(f"--finish keeps one lesion region of a two-class mask; {args.checkpoint} has "
                     f"{model.config.num_classes} classes, whose other classes it would erase: drop --finish")
    for note in notes:
        print(note)
    record = None
    todo = jobs
    if folder_run:
        record, todo = _resume(args, jobs, torch.device(device).type)
    failures = []
    for image, out in _progress(todo, args, folder_run):
        try:
            print(_predict_one(model, image, out, device, args, progress=not folder_run and not args.quiet))
        # missing/bad files, unreadable images, images the network cannot take (RuntimeError from torch)
        except (OSError, ValueError, RuntimeError) as error:
            failures.append(_failure_line(image, error))
            if record is not None and out.exists() and out.name not in record.finished:
                out.unlink()  # another run's mask: it must not pass for this checkpoint's
                failures[-1] += f" (removed {out.name}, which an earlier run had left)"
            continue
        if record is not None:
            record.finished.append(out.name)
            record.save(args.out)  # after each mask, so a killed run resumes with what is done
    if failures and not folder_run:
        return _fail(failures[0])
    if failures:
        return _fail(f"{len(failures)} of {len(todo)} image(s) failed:\n  " + "\n  ".join(failures))
    return 0


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
    problem = _finish_problem(args)
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
    tiff = args.out.suffix.lower() in TIFF_SUFFIXES or (args.image.is_dir() and args.format == "tif")
    if args.finish and tiff:
        return ("--finish is for lesion masks written as PNG: a .tif output streams a slide, whose many regions "
                "finishing (one region, no holes) would erase; drop --finish or write .png")
    return None


def _resume(args: argparse.Namespace, jobs: list[tuple[Path, Path]], device_type: str) -> tuple[RunRecord, list]:
    """This run's record, and the jobs to do: all of them unless the folder's record is this very run's.

    Prints one line saying which masks are kept, or why the masks already there are recomputed.
    The record is saved before the first mask, so a run stopped early never leaves another
    run's record beside its own masks.
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
    record = RunRecord(checkpoint=file_digest(args.checkpoint), checkpoint_path=str(args.checkpoint),
                       options=options)
    earlier = None if args.no_resume else RunRecord.load(args.out)
    existing = [out for _, out in jobs if out.exists()]
    todo = jobs
    if earlier is not None and earlier.same_run(record):
        record.finished = [name for name in dict.fromkeys(earlier.finished) if (args.out / name).is_file()]
        kept = set(record.finished)
        todo = [(image, out) for image, out in jobs if out.name not in kept]
        if len(todo) < len(jobs):
            print(f"kept {len(jobs) - len(todo)} mask(s) made by this checkpoint with these options in {args.out} "
                  "(--no-resume recomputes them)")
        unlisted = [out for out in existing if out.name not in kept]
        if unlisted:
            print(f"recomputing {len(unlisted)} mask(s) in {args.out} that its {RECORD_NAME} does not list as "
                  "made by this checkpoint with these options")
    elif existing and args.no_resume:
        print(f"recomputing the {len(existing)} mask(s) already in {args.out} (--no-resume)")
    elif existing and earlier is None:
        print(f"recomputing the {len(existing)} mask(s) already in {args.out}: no {RECORD_NAME} there records "
              "which checkpoint and options made them")
    elif existing and earlier is not None:
        print(f"recomputing the {len(existing)} mask(s) already in {args.out}, made by another run: "
              + "; ".join(record.differences(earlier)))
    record.save(args.out)
    return record, todo


def _failure_line(image: Path, error: BaseException) -> str:
    """One line naming the image and what went wrong with it."""
    message = "; ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__
    return message if image.name in message else f"{image}: {message}"


def _predict_one(model, image: Path, out: Path, device: str, args: argparse.Namespace, progress: bool) -> str:
    """Segment one image into ``out``; returns the line to print."""
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
    result: SlidePrediction | SegmentationResult
    if out.suffix.lower() in TIFF_SUFFIXES:
        result = predict_to_tiff(model, image, out, tile=args.tile, resume=not args.no_resume, **options)
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
    return f"wrote {out}: {image.name} segmented with {patches}{refined}{notes}"


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


