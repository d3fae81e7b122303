import pytest
import torch

from vggnet import build_model
from vggnet.features import PerceptualLoss, gram_matrix


def test_gram_matrix():
    f = torch.randn(2, 4, 3, 5)
    g = gram_matrix(f)
    assert g.shape == (2, 4, 4)
    torch.testing.assert_close(g, g.transpose(1, 2))
    torch.testing.assert_close(g[0, 1, 2], (f[0, 1] * f[0, 2]).sum() / 60)


def test_perceptual_loss_zero_for_same_image_and_differentiable():
    torch.manual_seed(0)
    model = build_model("D", num_classes=10, width=1 / 16)
    loss_fn = PerceptualLoss(model, style_weight=10.0)
    x = torch.rand(2, 3, 64, 64)
    assert loss_fn(x, x).item() == 0.0
    y = x.clone().requires_grad_(True)
    loss = loss_fn(y, torch.rand(2, 3, 64, 64))
    loss.backward()
    assert loss.item() > 0 and y.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in model.parameters())


def test_perceptual_loss_uses_the_models_preprocessing():
    model = build_model("D", num_classes=10, width=1 / 16)
    caffe = PerceptualLoss(model, {"mean": [103.939, 116.779, 123.68], "std": None, "channel_order": "BGR"})
    assert caffe.order.tolist() == [2, 1, 0] and caffe.std.flatten().tolist() == pytest.approx([1 / 255] * 3)
    with pytest.raises(ValueError, match="unknown layer names"):
        PerceptualLoss(model, content_layers=("relu2_2",))
    with pytest.raises(ValueError, match="unknown layer names \\['conv2_2'"):   # A has one conv in block 2
        PerceptualLoss(build_model("A", num_classes=10, width=1 / 16))
