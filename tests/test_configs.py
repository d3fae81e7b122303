import pytest

from vggnet.configs import CONFIGS, RECIPES, get_recipe, parse_token, resolve_config

WEIGHT_LAYERS = {"A": 11, "A-LRN": 11, "B": 13, "C": 16, "D": 16, "E": 19}


@pytest.mark.parametrize("config", list(WEIGHT_LAYERS))
def test_table1_depth_and_pools(config):
    tokens = CONFIGS[config]
    convs = [t for t in tokens if t.startswith("conv")]
    assert len(convs) + 3 == WEIGHT_LAYERS[config]  # + three FC layers
    assert tokens.count("maxpool") == 5
    assert tokens[-1] == "maxpool"


def test_lrn_only_in_a_lrn_and_1x1_only_in_c():
    for name, tokens in CONFIGS.items():
        assert ("LRN" in tokens) == (name == "A-LRN")
        assert any(t.startswith("conv1-") for t in tokens) == (name == "C")
    assert [t for t in CONFIGS["C"] if t.startswith("conv1-")] == ["conv1-256", "conv1-512", "conv1-512"]


@pytest.mark.parametrize("name,expected", [
    ("a", ("A", False)), ("A-LRN", ("A-LRN", False)), ("a-lrn", ("A-LRN", False)), ("D", ("D", False)),
    ("vgg16", ("D", False)), ("vgg16_bn", ("D", True)), ("VGG19_BN", ("E", True)), ("vgg13", ("B", False)),
])
def test_resolve_names(name, expected):
    assert resolve_config(name) == expected


def test_explicit_batch_norm_overrides_name():
    assert resolve_config("vgg16_bn", batch_norm=False) == ("D", False)
    assert resolve_config("E", batch_norm=True) == ("E", True)


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown VGG configuration 'vgg17'.*A-LRN.*vgg16_bn"):
        resolve_config("vgg17")


def test_parse_token():
    assert parse_token("conv3-64") == ("conv", 3, 64)
    assert parse_token("conv1-512") == ("conv", 1, 512)
    assert parse_token("maxpool") == ("pool", 2, 0)
    assert parse_token("LRN")[0] == "lrn"
    with pytest.raises(ValueError, match="bad Table 1 token"):
        parse_token("pool-3")


def test_recipes():
    paper = get_recipe("paper")
    assert (paper.optimizer, paper.momentum, paper.weight_decay, paper.dropout, paper.lr) == ("sgd", 0.9, 5e-4, 0.5, 1e-2)
    assert (paper.schedule, paper.plateau_factor, paper.max_lr_cuts, paper.batch_size) == ("plateau", 0.1, 3, 256)
    assert set(RECIPES) >= {"paper", "fast"}
    with pytest.raises(ValueError, match="unknown recipe 'slow'.*paper"):
        get_recipe("slow")
    assert get_recipe("fast").replace(epochs=3).epochs == 3
