import pytest
import torch

from vggnet.augment import channel_stats
from vggnet.preprocess import Preprocessing, center_crop, eval_scales, rescale


def test_normalize_subtracts_mean_rgb():
    images = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    mean, std = channel_stats(images)
    x = Preprocessing(tuple(mean), None).normalize(images)
    torch.testing.assert_close(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4, rtol=0)
    y = Preprocessing(tuple(mean), tuple(std)).normalize(images)
    torch.testing.assert_close(y.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-3, rtol=0)


def test_bgr_weights_get_their_channels_reversed_and_caffe_mean():
    images = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    images[:, 0] = 200                                    # pure red
    caffe = Preprocessing((103.939, 116.779, 123.68), None, "BGR", crop=4, resize=4)
    x = caffe(images)
    assert x.shape == (1, 3, 4, 4) and x.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(x[0, :, 0, 0], torch.tensor([-103.939, -116.779, 200 - 123.68]))   # B, G, R
    with pytest.raises(ValueError, match="channel_order must be RGB or BGR"):
        Preprocessing(channel_order="BRG")


def test_single_scale_crop_rescales_the_smaller_side_then_centre_crops():
    images = torch.arange(3 * 40 * 60, dtype=torch.float32).view(1, 3, 40, 60).to(torch.uint8)
    p = Preprocessing(crop=32, resize=48)
    out = p.crop_images(images)
    assert out.shape == (1, 3, 32, 32) and out.dtype == torch.uint8
    assert torch.equal(out, center_crop(rescale(images, 48), 32))
    assert rescale(images, 48).shape[-2:] == (48, 72)     # isotropic: 40x60 -> 48x72
    assert torch.equal(Preprocessing(crop=40, resize=40).crop_images(images), images[..., 10:50])


def test_unit_range_inputs_match_0_255_inputs():
    p = Preprocessing((120.0, 110.0, 100.0), (60.0, 50.0, 40.0))
    x = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(p.normalize_unit(x), p.normalize(x * 255))


def test_test_scales_follow_section_4_2():
    assert eval_scales(224, None) == (256, [224, 256, 288])        # S = 256: Q in {S-32, S, S+32}
    assert eval_scales(32, [32, 48]) == (40, [32, 40, 48])         # jittered: {Smin, mid, Smax}
    assert eval_scales(32, None) == (32, [32, 36, 40])             # S - 4 would be below the crop: three scales up


def test_weights_carry_their_preprocessing():
    from vggnet import build_model
    from vggnet.weights import describe
    spec = describe(build_model("A", num_classes=2, head="cifar", width=1 / 16), ["a", "b"], input_size=32,
                    mean=[1.0, 2.0, 3.0], std=None, channel_order="BGR", train_scale=[32, 48])
    assert spec.preprocessing == Preprocessing((1.0, 2.0, 3.0), None, "BGR", crop=32, resize=40)
