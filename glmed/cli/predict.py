"""``glmed predict CHECKPOINT IMAGE OUT``: segment an image, a whole slide or a folder of images.

``OUT`` ending in ``.tif``/``.tiff`` streams the mask to a tiled pyramidal TIFF
(:func:`glmed.inference.slide.predict_to_tiff`: any size, flat memory, resumes an interrupted run);
``.png`` writes it in memory, as 0/255 for a two-class model (the ISIC format) or as class
indices otherwise. With a folder of images, ``OUT`` is a folder: each image gets a mask named for
the ISIC scorer (``ISIC_0000000.jpg`` → ``ISIC_0000000_segmentation.png``, others
``NAME_mask.png``); masks already there are kept, so a stopped run resumes, and an unreadable
image is reported at the end without stopping the others. Exit status 1 and the reasons when
anything failed.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from glmed.inference.inferer import SegmentationResult
    from glmed.inference.slide import SlidePrediction

EXIT_FAILED = 1
TIFF_SUFFIXES = (".tif", ".tiff")
#: Files a folder run segments; anything else in the folder (licences, CSVs) is left alone.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".svs", ".ndpi", ".mrxs", ".scn", ".nii", ".nii.gz")
_ISIC_ID = re.compile(r"^ISIC_[0-9]{7}$")


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
    parser.add_argument("--batch-size", type=int, default=4, metavar="N", help="patches per forward pass")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: CUDA when available)")
    parser.add_argument("--tile", type=int, default=512, help="TIFF tile side, a multiple of 16")
    parser.add_argument("--no-resume", action="store_true",
                        help="start afresh: recompute masks a folder run already wrote, and interrupted TIFFs")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    """Load the network, segment the image(s) and write the mask(s); returns the exit status."""
    if args.image.is_dir():
        jobs = _folder_jobs(args.image, args.out, args.format)
        if isinstance(jobs, str):
            return _fail(jobs)
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
        model = load_model(args.checkpoint, map_location=device)
    except (OSError, ValueError) as error:
        return _fail(str(error))
    folder_run = args.image.is_dir()
    todo = [(image, out) for image, out in jobs if not folder_run or args.no_resume or not out.exists()]
    if len(todo) < len(jobs):
        print(f"kept {len(jobs) - len(todo)} mask(s) already written in {args.out} (--no-resume recomputes them)")
    failures = []
    for image, out in _progress(todo, args, folder_run):
        try:
            print(_predict_one(model, image, out, device, args, progress=not folder_run and not args.quiet))
        except (OSError, ValueError) as error:  # missing/bad files, unreadable images, bad options
            failures.append(str(error))
    if failures:
        return _fail(f"{len(failures)} of {len(todo)} image(s) failed:\n  " + "\n  ".join(failures))
    return 0


def _predict_one(model, image: Path, out: Path, device: str, args: argparse.Namespace, progress: bool) -> str:
    """Segment one image into ``out``; returns the line to print."""
    from glmed.inference.inferer import predict
    from glmed.inference.slide import predict_to_tiff
    from glmed.io.writers import write_mask_png

    options = {"batch_size": args.batch_size, "device": device, "progress": progress}
    result: SlidePrediction | SegmentationResult
    if out.suffix.lower() in TIFF_SUFFIXES:
        result = predict_to_tiff(model, image, out, tile=args.tile, resume=not args.no_resume, **options)
    else:
        segmentation = predict(model, image, with_coarse=False, **options)
        write_mask_png(out, segmentation.mask, model.config.num_classes)
        result = segmentation
    refined = f", refined {len(result.boxes)} box(es)" if result.boxes else ""
    notes = "".join(f"\nnote: {note}" for note in result.notes)
    patches = f"{result.patches} patch" + ("" if result.patches == 1 else "es")
    return f"wrote {out}: {image.name} segmented with {patches}{refined}{notes}"


def _folder_jobs(folder: Path, out: Path, mask_format: str) -> list[tuple[Path, Path]] | str:
    """``(image, mask)`` for every image in ``folder``, or the reason there is nothing to do."""
    if out.exists() and not out.is_dir():
        return f"{out}: with a folder of images, OUT must be a folder"
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES))
    if not images:
        return f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder"
    out.mkdir(parents=True, exist_ok=True)
    jobs = []
    for image in images:
        stem = image.name[: -len(".nii.gz")] if image.name.lower().endswith(".nii.gz") else image.stem
        name = f"{stem}_segmentation" if _ISIC_ID.match(stem) else f"{stem}_mask"
        jobs.append((image, out / f"{name}.{mask_format}"))
    return jobs


def _progress(jobs: list, args: argparse.Namespace, show: bool):
    if not show or args.quiet:
        return jobs
    from tqdm.auto import tqdm

    return tqdm(jobs, desc=f"segmenting {args.image}", unit="image")


def _fail(message: str) -> int:
    print(f"glmed predict: {message}", file=sys.stderr)
    return EXIT_FAILED


