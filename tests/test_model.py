import copy

import pytest
import torch
from torch import nn

import vggnet
from vggnet import PARAMETER_COUNTS, build_model, count_parameters, to_dense

CONFIGS = ["A", "A-LRN", "B", "C", "D", "E"]
TINY = 1 / 16  # 4..32 channels, FC 256: cheap enough for every configuration


@pytest.mark.parametrize("config", CONFIGS)
def test_parameter_counts_match_table2(config):
    with torch.device("meta"):
        model = build_model(config)
    assert count_parameters(model) == PARAMETER_COUNTS[config]


@pytest.mark.parametrize("config", CONFIGS)
def test_bn_adds_two_parameters_per_conv_channel(config):
    with torch.device("meta"):
        plain, bn = build_model(config), build_model(config, batch_norm=True)
    channels = sum(m.out_channels for m in plain.features if isinstance(m, nn.Conv2d))
    assert count_parameters(bn) - count_parameters(plain) == 2 * channels


@pytest.mark.parametrize("config", CONFIGS)
def test_num_classes_not_hard_coded(config):
    with torch.device("meta"):
        model = build_model(config, num_classes=37)
    assert model.classifier[6].out_features == 37
    assert count_parameters(model) == PARAMETER_COUNTS[config] - 963 * 4097


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("batch_norm", [False, True])
@pytest.mark.parametrize("head,size", [("cifar", (32, 32)), ("paper", (32, 32)), ("paper", (224, 224)),
                                       ("paper", (64, 96)), ("dense", (224, 224))])
def test_output_shapes(config, batch_norm, head, size):
    model = build_model(config, batch_norm=batch_norm, num_classes=7, head=head, width=TINY).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 7)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("batch_norm", [False, True])
def test_backward_reaches_every_parameter(config, batch_norm):
    model = build_model(config, batch_norm=batch_norm, num_classes=5, head="cifar", width=TINY)
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("batch_norm", [False, True])
def test_dense_head_equals_paper_head_at_224(config, batch_norm):
    torch.manual_seed(0)
    paper = build_model(config, batch_norm=batch_norm, num_classes=10, width=TINY).eval()
    dense = to_dense(paper)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(dense(x), paper(x), atol=1e-4, rtol=1e-4)
        assert dense.score_map(torch.randn(1, 3, 288, 352)).shape == (1, 10, 3, 5)


def test_dense_score_map_is_averaged():
    dense = to_dense(build_model("A", num_classes=4, width=TINY).eval())
    x = torch.randn(1, 3, 256, 320)
    with torch.no_grad():
        torch.testing.assert_close(dense(x), dense.score_map(x).mean(dim=(2, 3)))


def test_lrn_only_in_a_lrn_and_1x1_only_in_c():
    for config in CONFIGS:
        with torch.device("meta"):
            model = build_model(config)
        has_lrn = any(isinstance(m, nn.LocalResponseNorm) for m in model.modules())
        one_by_one = [m for m in model.features if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
        assert has_lrn == (config == "A-LRN")
        assert len(one_by_one) == (3 if config == "C" else 0)
    lrn = next(m for m in build_model("A-LRN", width=TINY).modules() if isinstance(m, nn.LocalResponseNorm))
    assert (lrn.size, lrn.alpha, lrn.beta, lrn.k) == (5, 1e-4, 0.75, 2.0)


def test_every_conv_is_3x3_stride1_pad1_and_pools_are_2x2():
    with torch.device("meta"):
        model = build_model("E")
    for m in model.features:
        if isinstance(m, nn.Conv2d):
            assert (m.kernel_size, m.stride, m.padding) == ((3, 3), (1, 1), (1, 1))
        if isinstance(m, nn.MaxPool2d):
            assert (m.kernel_size, m.stride) == (2, 2)
    drops = [m.p for m in model.classifier if isinstance(m, nn.Dropout)]
    assert drops == [0.5, 0.5]


TORCHVISION_NAMES = ["vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn"]


@pytest.mark.parametrize("name", TORCHVISION_NAMES)
def test_torchvision_state_dict_loads_strict_and_matches(name):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    theirs = getattr(torchvision.models, name)(num_classes=10).eval()
    ours = getattr(vggnet, name)(num_classes=10).eval()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", TORCHVISION_NAMES)
def test_builders_match_names(name):
    with torch.device("meta"):
        model = getattr(vggnet, name)()
    assert model.batch_norm == name.endswith("_bn")
    assert model.config == {"11": "A", "13": "B", "16": "D", "19": "E"}[name[3:5]]
    assert getattr(vggnet, name).__name__ == name


@pytest.mark.parametrize("init", ["paper", "glorot", "kaiming", "he"])
def test_init_schemes(init):
    torch.manual_seed(0)
    model = build_model("A", init=init, width=0.25)
    conv = model.features[0]
    fc = model.classifier[3]
    assert conv.bias.abs().sum() == 0 and fc.bias.abs().sum() == 0
    std = fc.weight.std().item()
    if init == "paper":
        assert abs(std - 0.01) < 0.001 and abs(conv.weight.std().item() - 0.01) < 0.003
    elif init == "glorot":
        bound = (6 / (fc.in_features + fc.out_features)) ** 0.5
        assert fc.weight.abs().max() <= bound and abs(std - bound / 3**0.5) < 0.1 * bound
    else:
        fan_out = conv.out_channels * 9
        assert abs(conv.weight.std().item() - (2 / fan_out) ** 0.5) < 0.3 * (2 / fan_out) ** 0.5
        he_fc = (2 / fc.in_features) ** 0.5    # "he" keeps fc7's activations' variance; "kaiming" is torchvision's
        assert abs(std - (he_fc if init == "he" else 0.01)) < 0.05 * (he_fc if init == "he" else 0.01)
        assert abs(model.classifier[6].weight.std().item() - 0.01) < 0.001
    with pytest.raises(ValueError, match="unknown init 'xavier'"):
        build_model("A", init="xavier", width=TINY)


@pytest.mark.parametrize("config,last", [("A", "conv5_2"), ("B", "conv5_2"), ("C", "conv5_3"), ("D", "conv5_3"),
                                         ("E", "conv5_4")])
def test_feature_names_and_shapes(config, last):
    model = build_model(config, batch_norm=True, num_classes=10, width=TINY).eval()
    names = model.layer_names()
    assert names[0] == "conv1_1" and last in names and "pool5" in names and names[-3:] == ["fc6", "fc7", "fc8"]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = model.extract(x, ["conv1_1", "pool1", "conv3_1", last, "pool5", "fc7", "fc8"])
        logits = model(x)
    assert feats["conv1_1"].shape == (2, 4, 64, 64)
    assert feats["pool1"].shape == (2, 4, 32, 32)
    assert feats["conv3_1"].shape == (2, 16, 16, 16)
    assert feats[last].shape == (2, 32, 4, 4)
    assert feats["pool5"].shape == (2, 32, 2, 2)
    assert feats["fc7"].shape == (2, 256)
    torch.testing.assert_close(feats["fc8"], logits)
    assert (feats["conv1_1"] >= 0).all()  # after ReLU


def test_extract_stops_early_and_rejects_unknown_names():
    model = build_model("D", width=TINY)
    assert list(model.extract(torch.randn(1, 3, 32, 32), ["pool2", "conv1_2"])) == ["conv1_2", "pool2"]
    with pytest.raises(ValueError, match=r"unknown layer names \['conv6_1'\]"):
        model.extract(torch.randn(1, 3, 32, 32), ["conv6_1"])


def test_feature_info_like_timm():
    with torch.device("meta"):
        model = build_model("D")
    assert [(f["name"], f["num_chs"], f["reduction"]) for f in model.feature_info] == [
        ("pool1", 64, 2), ("pool2", 128, 4), ("pool3", 256, 8), ("pool4", 512, 16), ("pool5", 512, 32)]


def test_too_small_input_and_bad_names_raise():
    model = build_model("A", width=TINY)
    with pytest.raises(ValueError, match="at least 32 px"):
        model(torch.randn(1, 3, 16, 64))
    with pytest.raises(ValueError, match="at least 224 px"):
        to_dense(model)(torch.randn(1, 3, 200, 224))
    with pytest.raises(ValueError, match=r"shape \(N, 3, H, W\)"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="unknown head 'fcn'"):
        build_model("A", head="fcn")
    with pytest.raises(ValueError, match="valid names"):
        build_model("F")
    with pytest.raises(ValueError, match="score_map needs the 'dense' head"):
        model.score_map(torch.randn(1, 3, 224, 224))


def test_activation_checkpointing_same_gradients_and_statistics():
    torch.manual_seed(0)
    plain = build_model("A", batch_norm=True, num_classes=10, head="cifar", width=TINY, init="glorot").train()
    ckpt = copy.deepcopy(plain)
    ckpt.checkpoint_activations = True
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    for m in (plain, ckpt):
        torch.manual_seed(1)            # the same dropout masks
        torch.nn.functional.cross_entropy(m(x), y).backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-5, msg=name)
    for (name, a), b in zip(plain.named_buffers(), ckpt.buffers()):
        if "num_batches" not in name:   # running means and variances updated once, not twice
            torch.testing.assert_close(a, b, msg=name)
