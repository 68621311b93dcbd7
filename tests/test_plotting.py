import warnings

import matplotlib
import numpy as np
import pytest
from matplotlib.colors import to_rgb
from PIL import Image

from glmed.inference.result import SegmentationResult
from glmed.plotting import (
    BOX_COLOUR,
    LABELS,
    PREDICTION_COLOUR,
    TRUTH_COLOUR,
    save_result_figure,
    show_result,
)

matplotlib.use("Agg")


def result_with_box():
    mask = np.zeros((60, 80), dtype=np.uint8)
    mask[20:40, 30:50] = 1
    return SegmentationResult(mask=mask, coarse=mask, boxes=[(10, 20, 50, 60)], patches=4)


def pixels_of(picture, colour, tolerance=30):
    """Pixels within ``tolerance`` of ``colour`` on every channel."""
    target = np.array(to_rgb(colour)) * 255
    return (np.abs(picture.astype(float) - target) <= tolerance).all(axis=-1)


def legend_texts(ax):
    return [text.get_text() for text in ax.get_legend().get_texts()]


def test_overlay_draws_outline_and_box_and_is_written_atomically(tmp_path):
    image = np.full((60, 80, 3), 200, dtype=np.uint8)
    path = tmp_path / "overlay.png"
    truth = np.zeros((60, 80), dtype=np.uint8)
    truth[15:45, 25:55] = 1
    save_result_figure(path, image, result_with_box(), truth=truth, title="t")
    picture = np.asarray(Image.open(path).convert("RGB"))
    assert picture.shape[0] > 50 and picture.shape[1] > 50
    # Okabe-Ito colours (this assertion used to look for pure red and lime): prediction vermillion,
    # truth sky blue, boxes yellow
    for colour in (PREDICTION_COLOUR, TRUTH_COLOUR, BOX_COLOUR):
        assert pixels_of(picture, colour).sum() > 20, colour
    assert [p.name for p in tmp_path.iterdir()] == ["overlay.png"]


def test_overlay_refuses_an_image_of_another_size():
    with pytest.raises(ValueError, match="mask"):
        show_result(np.zeros((10, 10, 3)), result_with_box())


def test_overlay_names_both_sizes_when_the_image_differs():
    with pytest.raises(ValueError, match=r"10×12.*60×80"):
        show_result(np.zeros((10, 12, 3)), result_with_box())


def test_overlay_refuses_a_truth_of_another_size_before_drawing_anything():
    import matplotlib.pyplot as plt

    plt.close("all")
    with pytest.raises(ValueError, match=r"truth is 30×40 but the result's mask is 60×80"):
        show_result(np.zeros((60, 80, 3), dtype=np.uint8), result_with_box(), truth=np.zeros((30, 40)))
    assert plt.get_fignums() == []  # refused before a figure was made


def test_overlay_refuses_a_truth_that_is_not_a_mask():
    with pytest.raises(ValueError, match="H×W"):
        show_result(np.zeros((60, 80, 3), dtype=np.uint8), result_with_box(), truth=np.zeros((60, 80, 3)))


def test_overlay_accepts_a_truth_with_one_channel():
    ax = show_result(np.zeros((60, 80, 3), dtype=np.uint8), result_with_box(), truth=np.zeros((60, 80, 1)))
    assert LABELS["truth"] in legend_texts(ax)


def test_overlay_legend_names_what_is_drawn_in_colour_blind_safe_colours():
    ax = show_result(np.full((60, 80, 3), 200, dtype=np.uint8), result_with_box(), truth=result_with_box().mask)
    assert legend_texts(ax) == ["prediction", "truth", "refined box"]
    colours = [matplotlib.colors.to_hex(line.get_color()) for line in ax.get_legend().get_lines()]
    assert colours == [PREDICTION_COLOUR.lower(), TRUTH_COLOUR.lower(), BOX_COLOUR.lower()]
    drawn = {matplotlib.colors.to_hex(c) for contour in ax.collections for c in contour.get_edgecolor()}
    assert drawn == {PREDICTION_COLOUR.lower(), TRUTH_COLOUR.lower()}
    assert "#ff0000" not in drawn and "#00ff00" not in drawn


def test_overlay_legend_leaves_out_what_is_not_drawn():
    plain = SegmentationResult(mask=result_with_box().mask)
    ax = show_result(np.zeros((60, 80)), plain)
    assert legend_texts(ax) == ["prediction"]
    assert show_result(np.zeros((60, 80)), plain, legend=False).get_legend() is None


def test_overlay_reads_the_image_from_a_path(tmp_path):
    path = tmp_path / "image.png"
    Image.fromarray(np.full((60, 80, 3), 120, dtype=np.uint8)).save(path)
    ax = show_result(path, result_with_box())
    assert ax.get_images()[0].get_array().shape[:2] == (60, 80)
    assert legend_texts(ax) == ["prediction", "refined box"]
    ax = show_result(str(path), result_with_box(), max_side=20)  # read downsampled, drawn in full-size coordinates
    assert max(ax.get_images()[0].get_array().shape[:2]) <= 20
    assert ax.get_xlim() == (0, 80) and ax.get_ylim() == (60, 0)


def test_overlay_of_a_path_names_the_file_and_both_sizes(tmp_path):
    path = tmp_path / "other.png"
    Image.fromarray(np.zeros((30, 40, 3), dtype=np.uint8)).save(path)
    with pytest.raises(ValueError, match=r"other\.png is 30×40 but the result's mask is 60×80"):
        show_result(path, result_with_box())


def test_overlay_refuses_what_is_not_an_image():
    with pytest.raises(ValueError, match="array, a file path"):
        show_result(np.float64(3.0), result_with_box())


def test_overlay_of_a_one_pixel_high_mask_draws_without_a_matplotlib_error():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ax = show_result(np.zeros((1, 80)), SegmentationResult(mask=np.ones((1, 80), dtype=np.uint8)))
    assert legend_texts(ax) == ["prediction"]


def test_saved_figure_reads_the_image_from_a_path(tmp_path):
    image_path = tmp_path / "image.png"
    Image.fromarray(np.full((60, 80, 3), 200, dtype=np.uint8)).save(image_path)
    save_result_figure(tmp_path / "overlay.png", image_path, result_with_box())
    picture = np.asarray(Image.open(tmp_path / "overlay.png").convert("RGB"))
    assert pixels_of(picture, PREDICTION_COLOUR).any()


def test_score_histogram_marks_the_threshold_and_the_headline():
    import pandas as pd

    from glmed.plotting import plot_scores

    jaccard = np.array([0.1, 0.5, 0.7, 0.8, 0.9])
    per_image = pd.DataFrame({"jaccard": jaccard, "threshold_jaccard": np.where(jaccard >= 0.65, jaccard, 0.0)})
    ax = plot_scores(per_image)
    lines = {round(line.get_xdata()[0], 3) for line in ax.get_lines()}
    assert lines == {0.65, round(per_image.threshold_jaccard.mean(), 3)}
    assert sum(patch.get_height() for patch in ax.patches) == 5
    assert "(2 images)" in " ".join(text.get_text() for text in ax.get_legend().get_texts())
