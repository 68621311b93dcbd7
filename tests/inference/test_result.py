import numpy as np
import pytest

from glmed.inference.result import SegmentationResult

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def a_result(**fields):
    mask = np.zeros((40, 50), dtype=np.uint8)
    mask[10:30, 5:25] = 3  # any class other than 0 is foreground
    return SegmentationResult(mask=mask, **fields)


def test_repr_is_one_line_with_size_foreground_boxes_patches_and_notes():
    result = a_result(coarse=np.ones((40, 50), dtype=np.uint8), boxes=[(0, 0, 40, 30)], patches=30,
                      notes=["first remark", "second remark"], thumbnail=np.zeros((20, 25, 3), dtype=np.uint8))
    text = repr(result)
    assert text == "SegmentationResult(40×50, foreground 20.0%, 1 box, 30 patches, 2 notes)"
    assert "\n" not in text and "array" not in text and "remark" not in text


def test_repr_counts_in_plural_and_never_rounds_some_foreground_to_nothing():
    mask = np.zeros((100, 100), dtype=np.uint8)
    mask[0, 0] = 1
    text = repr(SegmentationResult(mask=mask, boxes=[(0, 0, 1, 1), (1, 1, 2, 2)], patches=1, notes=["n"]))
    assert text == "SegmentationResult(100×100, foreground <0.1%, 2 boxes, 1 patch, 1 note)"
    assert repr(SegmentationResult(mask=np.zeros((4, 4), np.uint8))) == (
        "SegmentationResult(4×4, foreground 0.0%, 0 boxes, 0 patches, 0 notes)")


def test_repr_counts_the_patches_that_took_the_global_answer_only_when_there_are_some():
    assert repr(a_result(patches=12, patches_skipped=18)) == (
        "SegmentationResult(40×50, foreground 20.0%, 0 boxes, 12 patches, 18 skipped, 0 notes)")
    assert "skipped" not in repr(a_result(patches=12))


def test_repr_of_a_memory_mapped_mask(tmp_path):
    mask = np.lib.format.open_memmap(tmp_path / "mask.npy", mode="w+", dtype=np.uint8, shape=(3000, 20))
    mask[:1500] = 1
    assert "3000×20, foreground 50.0%" in repr(SegmentationResult(mask=mask))


def test_still_a_dataclass_with_its_fields_in_order():
    import dataclasses

    fields = dataclasses.fields(SegmentationResult)
    assert [f.name for f in fields] == ["mask", "coarse", "boxes", "patches", "notes", "thumbnail", "patches_skipped",
                                         "patches_glass"]
    result = SegmentationResult(np.zeros((2, 2), np.uint8))
    assert (result.coarse, result.boxes, result.patches, result.notes, result.thumbnail, result.patches_skipped) == (
        None, [], 0, [], None, 0)


def test_notebook_picture_is_a_png_when_there_is_a_thumbnail():
    pytest.importorskip("matplotlib")
    thumbnail = np.full((20, 25, 3), 180, dtype=np.uint8)
    png = a_result(boxes=[(5, 0, 35, 30)], thumbnail=thumbnail)._repr_png_()
    assert isinstance(png, bytes) and png.startswith(PNG_SIGNATURE)


@pytest.mark.parametrize("thumbnail", [np.zeros((20, 25), np.uint8), np.zeros((20, 25, 1), np.uint8),
                                       np.zeros((20, 25, 4), np.uint8), np.zeros((1, 25, 3), np.uint8)])
def test_notebook_picture_of_grey_alpha_and_thin_thumbnails(thumbnail):
    pytest.importorskip("matplotlib")
    assert a_result(thumbnail=thumbnail)._repr_png_().startswith(PNG_SIGNATURE)


def test_notebook_picture_samples_only_the_thumbnails_pixels_of_the_mask():
    pytest.importorskip("matplotlib")
    from glmed.plotting import _nearest

    rows = _nearest(20, 40)
    assert rows.tolist() == list(range(1, 40, 2)) and _nearest(3, 3).tolist() == [0, 1, 2]


def test_no_notebook_picture_without_a_thumbnail():
    assert a_result()._repr_png_() is None


def test_no_notebook_picture_without_matplotlib(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def without_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_matplotlib)
    assert a_result(thumbnail=np.zeros((20, 25, 3), np.uint8))._repr_png_() is None
