import matplotlib
import numpy as np
import pytest
from PIL import Image

from glmed.inference.inferer import SegmentationResult
from glmed.plotting import save_result_figure, show_result

matplotlib.use("Agg")


def result_with_box():
    mask = np.zeros((60, 80), dtype=np.uint8)
    mask[20:40, 30:50] = 1
    return SegmentationResult(mask=mask, coarse=mask, boxes=[(10, 20, 50, 60)], patches=4)


def test_overlay_draws_outline_and_box_and_is_written_atomically(tmp_path):
    image = np.full((60, 80, 3), 200, dtype=np.uint8)
    path = tmp_path / "overlay.png"
    save_result_figure(path, image, result_with_box(), truth=result_with_box().mask, title="t")
    picture = np.asarray(Image.open(path).convert("RGB"))
    assert picture.shape[0] > 50 and picture.shape[1] > 50
    reds = (picture[..., 0] > 200) & (picture[..., 1] < 80) & (picture[..., 2] < 80)
    yellows = (picture[..., 0] > 200) & (picture[..., 1] > 200) & (picture[..., 2] < 80)
    assert reds.any() and yellows.any()
    assert [p.name for p in tmp_path.iterdir()] == ["overlay.png"]


def test_overlay_refuses_an_image_of_another_size():
    with pytest.raises(ValueError, match="mask"):
        show_result(np.zeros((10, 10, 3)), result_with_box())


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
