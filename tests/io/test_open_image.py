"""open_image: the reader is chosen by content, and every file it cannot read is named in the error."""

import subprocess
import sys

import numpy as np
import pytest
import tifffile
from PIL import Image

import glmed
from glmed.io import ImageFormatError, open_image


@pytest.mark.parametrize(
    "name, save, reader",
    [
        ("a.jpg", lambda p, a: Image.fromarray(a).save(p, format="JPEG"), "PillowReader"),
        ("a.png", lambda p, a: Image.fromarray(a).save(p, format="PNG"), "PillowReader"),
        ("a.bmp", lambda p, a: Image.fromarray(a).save(p, format="BMP"), "PillowReader"),
        ("a.tif", lambda p, a: tifffile.imwrite(p, a), "TiffReader"),
        ("a.tiff", lambda p, a: tifffile.imwrite(p, a, bigtiff=True), "TiffReader"),
        ("jpeg_named.png", lambda p, a: Image.fromarray(a).save(p, format="JPEG"), "PillowReader"),
        ("tiff_named.jpg", lambda p, a: tifffile.imwrite(p, a), "TiffReader"),
    ],
)
def test_reader_is_chosen_by_content(tmp_path, make_image, name, save, reader):
    path = tmp_path / name
    save(path, make_image(16, 24))
    with open_image(path) as opened:
        assert type(opened).__name__ == reader and opened.size == (16, 24)
    assert type(glmed.open_image(str(path))).__name__ == reader


def test_missing_file_folder_empty_and_unknown_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.png"):
        open_image(tmp_path / "nothing.png")
    with pytest.raises(ImageFormatError, match="is a folder"):
        open_image(tmp_path)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageFormatError, match="empty.png: the file is empty"):
        open_image(tmp_path / "empty.png")
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(ImageFormatError, match="notes.txt: unknown image format.*glmed reads JPEG"):
        open_image(tmp_path / "notes.txt")
    (tmp_path / "half.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(10))
    with pytest.raises(ImageFormatError, match="half.png"):
        open_image(tmp_path / "half.png")


def test_unknown_backend_lists_the_choices(tmp_path, make_image):
    path = tmp_path / "a.png"
    Image.fromarray(make_image(8, 8)).save(path)
    with pytest.raises(ValueError, match="choose one of.*nibabel.*openslide.*pillow.*tifffile"):
        open_image(path, backend="imageio")


def test_importing_glmed_io_loads_no_image_library():
    code = (
        "import sys, glmed, glmed.io; "
        "loaded = [m for m in ('openslide', 'tifffile', 'nibabel', 'PIL', 'skimage', 'torch') if m in sys.modules]; "
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_readers_return_their_declared_dtype_and_channels(tmp_path, make_image):
    path = tmp_path / "g.png"
    Image.fromarray(make_image(10, 12, 1, np.uint16)[..., 0]).save(path)
    reader = open_image(path)
    region = reader.read((0, 0, 10, 12))
    assert region.dtype == reader.dtype == np.uint16 and region.shape[2] == reader.channels == 1
