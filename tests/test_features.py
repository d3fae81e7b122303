import pytest
import torch

from vggnet import build_model
from vggnet.features import PerceptualLoss, gram_matrix
from vggnet.weights import describe


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
    spec = describe(model, mean=[103.939, 116.779, 123.68], std=None, channel_order="BGR")
    caffe = PerceptualLoss(model, spec)
    assert caffe.preprocess.channel_order == "BGR" and caffe.preprocess.std is None
    x = torch.rand(1, 3, 32, 32)
    by_hand = x.flip(1) * 255 - torch.tensor([103.939, 116.779, 123.68]).view(1, 3, 1, 1)   # RGB [0, 1] -> BGR - mean
    torch.testing.assert_close(caffe.features(x)["conv2_2"], model.extract(by_hand, ["conv2_2"])["conv2_2"],
                               atol=1e-4, rtol=1e-4)   # channels-last kernels round differently
    default = PerceptualLoss(model).preprocess                                   # no description: torchvision's
    assert default.mean == (123.675, 116.28, 103.53) and default.channel_order == "RGB"
    with pytest.raises(ValueError, match="unknown layer names"):
        PerceptualLoss(model, content_layers=("relu2_2",))
    with pytest.raises(ValueError, match="unknown layer names \\['conv2_2'"):   # A has one conv in block 2
        PerceptualLoss(build_model("A", num_classes=10, width=1 / 16))
