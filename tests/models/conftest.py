import pytest
import torch

from glmed.geometry import patch_grid
from glmed.models.glnet import GLNet

GLOBAL, PATCH, OVERLAP = 64, 48, 8


def tiny_glnet(sharing: str, num_classes: int = 2) -> GLNet:
    """A ResNet18 GLNet narrow enough for CPU tests, in eval mode so BatchNorm is deterministic."""
    return GLNet(num_classes, "resnet18", sharing, fpn_channels=16, global_size=GLOBAL, patch_size=PATCH,
                 overlap=OVERLAP).eval()


@pytest.fixture
def batch():
    """Two downsampled images and the patches of two 100×90 images, mixed in one batch."""
    grid = patch_grid((100, 90), PATCH, OVERLAP)
    boxes = torch.tensor(grid.normalized(), dtype=torch.float32)
    boxes = torch.cat([boxes, boxes])
    image_index = torch.tensor([0] * len(grid) + [1] * len(grid))
    return dict(
        global_image=torch.randn(2, 3, GLOBAL, GLOBAL),
        patches=torch.randn(len(boxes), 3, PATCH, PATCH),
        boxes=boxes,
        image_index=image_index,
    )
