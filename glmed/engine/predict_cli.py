"""``glmed predict CHECKPOINT IMAGE OUT``: segment one image or whole slide with a trained network.

``OUT`` ending in ``.tif``/``.tiff`` streams the mask to a tiled pyramidal TIFF
(:func:`glmed.engine.slide.predict_to_tiff`: any size, flat memory, resumes an interrupted run);
``.png`` writes it in memory,
as 0/255 for a two-class model (the ISIC format) or as class indices otherwise. Prints what was
done; a bad checkpoint, image or output path ends with status 1 and the reason.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_FAILED = 1
TIFF_SUFFIXES = (".tif", ".tiff")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``predict`` subcommand's arguments."""
    parser.add_argument("checkpoint", type=Path, metavar="CHECKPOINT",
                        help="a checkpoint a recipe wrote (RUN_DIR/checkpoints/best.pt)")
    parser.add_argument("image", type=Path, metavar="IMAGE",
                        help="the image or slide: JPEG/PNG, TIFF, SVS/NDPI/MRXS (glmed[wsi]), NIfTI")
    parser.add_argument("out", type=Path, metavar="OUT",
                        help="the mask to write: .tif/.tiff (pyramidal, streamed) or .png")
    parser.add_argument("--batch-size", type=int, default=4, metavar="N", help="patches per forward pass")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: CUDA when available)")
    parser.add_argument("--tile", type=int, default=512, help="TIFF tile side, a multiple of 16")
    parser.add_argument("--no-resume", action="store_true",
                        help="for .tif output: start afresh instead of resuming an interrupted run")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    """Load the network, segment the image and write the mask; returns the exit status."""
    suffix = args.out.suffix.lower()
    if suffix not in TIFF_SUFFIXES + (".png",):
        print(f"glmed predict: {args.out}: the output must end in .tif, .tiff or .png", file=sys.stderr)
        return EXIT_FAILED
    import torch

    from glmed.engine.checkpoint import load_model
    from glmed.engine.inferer import predict
    from glmed.engine.slide import predict_to_tiff

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        model = load_model(args.checkpoint, map_location=device)
        options = dict(batch_size=args.batch_size, device=device, progress=not args.quiet)
        if suffix in TIFF_SUFFIXES:
            result = predict_to_tiff(model, args.image, args.out, tile=args.tile, resume=not args.no_resume, **options)
        else:
            result = predict(model, args.image, with_coarse=False, **options)
            _write_png(args.out, result.mask, model.config.num_classes)
    except (OSError, ValueError) as error:  # missing/bad files, unreadable images, bad options
        print(f"glmed predict: {error}", file=sys.stderr)
        return EXIT_FAILED
    refined = f", refined {len(result.boxes)} box(es)" if result.boxes else ""
    print(f"wrote {args.out}: {args.image.name} segmented with {result.patches} patches{refined}")
    for note in result.notes:
        print(f"note: {note}")
    return 0


def _write_png(path: Path, mask, num_classes: int) -> None:
    """0/255 for a two-class mask (what the ISIC scorer reads), class indices otherwise."""
    from PIL import Image

    from glmed.io.writers import atomic_path, write_mask_png

    if num_classes == 2:
        write_mask_png(path, mask != 0)
        return
    if num_classes > 256:
        raise ValueError(f"{path}: a PNG holds at most 256 classes; write a .tif instead")
    with atomic_path(path) as temporary:
        Image.fromarray(mask.astype("uint8"), mode="L").save(temporary, format="PNG")
