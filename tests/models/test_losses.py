import pytest
import torch
import torch.nn.functional as F
from conftest import GLOBAL, PATCH, tiny_glnet

from glmed.models.losses import FocalLoss, GLNetLoss


def test_focal_loss_with_gamma_zero_is_cross_entropy():
    logits = torch.randn(4, 5, 8, 8)
    target = torch.randint(0, 5, (4, 8, 8))
    torch.testing.assert_close(FocalLoss(gamma=0)(logits, target), F.cross_entropy(logits, target))


def test_focal_loss_down_weights_easy_pixels():
    logits = torch.tensor([[[[4.0]], [[-4.0]]]])  # confidently class 0
    easy, hard = torch.zeros(1, 1, 1, dtype=torch.long), torch.ones(1, 1, 1, dtype=torch.long)
    ce_ratio = F.cross_entropy(logits, hard) / F.cross_entropy(logits, easy)
    focal_ratio = FocalLoss(gamma=6)(logits, hard) / FocalLoss(gamma=6)(logits, easy)
    assert focal_ratio > ce_ratio * 1e3


def test_ignored_pixels_do_not_count():
    logits = torch.randn(1, 2, 4, 4)
    target = torch.randint(0, 2, (1, 4, 4))
    masked = target.clone()
    masked[0, :2] = 255
    expected = F.cross_entropy(logits, masked, ignore_index=255)
    torch.testing.assert_close(FocalLoss(gamma=0, ignore_index=255)(logits, masked), expected)


def test_colour_or_out_of_range_labels_are_refused_clearly():
    logits = torch.randn(1, 2, 4, 4)
    with pytest.raises(ValueError, match="not class indices"):
        FocalLoss()(logits, torch.full((1, 4, 4), 255))
    with pytest.raises(ValueError, match="integer class-index"):
        FocalLoss()(logits, torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="does not match"):
        FocalLoss()(logits, torch.zeros(1, 4, 4, 3, dtype=torch.long))


@pytest.mark.parametrize("mode, train_global", [("none", True), ("g2l", False), ("bidirectional", False)])
def test_fmreg_gradient_reaches_local_parameters_only(mode, train_global, batch):
    model = tiny_glnet(mode)
    out = model(**batch, train_global=train_global)
    loss = GLNetLoss(main_weight=0, local_weight=0, global_weight=0)(
        out, torch.zeros(len(batch["patches"]), PATCH, PATCH, dtype=torch.long),
        torch.zeros(2, GLOBAL, GLOBAL, dtype=torch.long))
    assert set(loss.terms) == {"main", "local", "global", "fmreg"} and loss.terms["fmreg"] > 0
    loss.total.backward()
    local_grads = [p.grad for p in model.local_branch.parameters() if p.grad is not None]
    assert local_grads and any(g.abs().sum() > 0 for g in local_grads)
    for part in (model.global_branch, model.global_head, model.aggregate):
        assert all(p.grad is None or p.grad.abs().sum() == 0 for p in part.parameters())


def test_loss_terms_follow_the_mode(batch):
    n = len(batch["patches"])
    patch_labels = torch.randint(0, 2, (n, PATCH, PATCH))
    global_labels = torch.randint(0, 2, (2, GLOBAL, GLOBAL))
    for mode, terms in [("global_only", {"main"}), ("local_only", {"main"}), ("none", {"main", "local", "global",
                                                                                      "fmreg"})]:
        out = tiny_glnet(mode)(**batch)
        result = GLNetLoss()(out, patch_labels, global_labels)
        assert set(result.terms) == terms
        torch.testing.assert_close(result.total, sum(result.terms.values()))


@pytest.mark.parametrize("gamma", [0.5, 1.0, 6.0])
def test_focal_gradients_stay_finite_on_confident_pixels(gamma):
    logits = torch.tensor([[[[30.0]], [[-30.0]]]], requires_grad=True)
    FocalLoss(gamma)(logits, torch.zeros(1, 1, 1, dtype=torch.long)).backward()
    assert torch.isfinite(logits.grad).all()


def test_train_global_false_keeps_the_global_head_out_of_the_graph(batch):
    model = tiny_glnet("g2l")
    out = model(**batch, train_global=False)
    assert not out.global_logits.requires_grad


def _dice_by_hand(probabilities, labels, classes):
    """1 − 2|P∩Y|/(|P|+|Y|) over the whole batch per class, averaged: the soft Dice loss written out."""
    losses = []
    for k in classes:
        p, y = probabilities[:, k], (labels == k).float()
        losses.append(1 - (2 * (p * y).sum() + 1e-5) / (p.sum() + y.sum() + 1e-5))
    return torch.stack(losses).mean()


@pytest.mark.parametrize("num_classes", [2, 4])
def test_the_dice_term_is_the_soft_dice_over_the_batch_leaving_background_out_for_two_classes(num_classes):
    torch.manual_seed(0)
    logits = torch.randn(3, num_classes, 8, 8)
    labels = torch.randint(0, num_classes, (3, 8, 8))
    labels[1] = 0  # an image without foreground counts within the batch, not as a term of its own
    probabilities = logits.softmax(dim=1)
    classes = range(1, 2) if num_classes == 2 else range(num_classes)
    assert GLNetLoss().dice(logits, labels) == pytest.approx(float(_dice_by_hand(probabilities, labels, classes)),
                                                            rel=1e-5)


def test_the_dice_term_skips_ignored_pixels():
    torch.manual_seed(1)
    logits, labels = torch.randn(2, 2, 6, 6), torch.randint(0, 2, (2, 6, 6))
    ignored = labels.clone()
    ignored[:, :2] = 255
    expected = _dice_by_hand(logits.softmax(dim=1)[:, :, 2:], labels[:, 2:], [1])
    assert GLNetLoss(ignore_index=255).dice(logits, ignored) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("mode", ["global_only", "none"])
def test_a_dice_weight_adds_its_weighted_term_on_the_main_output(batch, mode):
    torch.manual_seed(2)
    patch_labels = torch.randint(0, 2, (len(batch["patches"]), PATCH, PATCH))
    global_labels = torch.randint(0, 2, (2, GLOBAL, GLOBAL))
    with torch.no_grad():
        output = tiny_glnet(mode)(**batch)
    main_labels = global_labels if mode == "global_only" else patch_labels
    plain = GLNetLoss()(output, patch_labels, global_labels)
    with_dice = GLNetLoss(dice_weight=0.5)(output, patch_labels, global_labels)
    assert "dice" not in plain.terms and set(with_dice.terms) == set(plain.terms) | {"dice"}
    assert float(with_dice.terms["dice"]) == pytest.approx(0.5 * float(GLNetLoss().dice(output.logits, main_labels)))
    assert float(with_dice.total) == pytest.approx(float(plain.total + with_dice.terms["dice"]), rel=1e-6)


def test_a_global_only_step_weighs_its_focal_term_as_global_and_adds_the_main_output_terms():
    torch.manual_seed(3)
    logits, labels = torch.randn(2, 2, 8, 8), torch.randint(0, 2, (2, 8, 8))
    loss = GLNetLoss(global_weight=0.5, main_weight=9.0, boundary_weight=0.2, dice_weight=0.3, boundary_width=1)
    result = loss.global_only(logits, labels)
    assert set(result.terms) == {"global", "boundary", "dice"}
    assert float(result.terms["global"]) == pytest.approx(0.5 * float(loss.focal(logits, labels)))
    assert float(result.terms["boundary"]) == pytest.approx(0.2 * float(loss.boundary(logits, labels)))
    assert float(result.terms["dice"]) == pytest.approx(0.3 * float(loss.dice(logits, labels)))
    assert float(result.total) == pytest.approx(sum(float(term) for term in result.terms.values()), rel=1e-6)
    assert set(GLNetLoss().global_only(logits, labels).terms) == {"global"}
