"""vggnet: VGGNet (Simonyan & Zisserman, 2014) on PyTorch, every configuration of Table 1."""

from .configs import CONFIGS, PARAMETER_COUNTS, RECIPES, Recipe, get_recipe, resolve_config
from .model import (VGG, build_model, count_parameters, init_weights, to_dense, vgg11, vgg11_bn,
                    vgg13, vgg13_bn, vgg16, vgg16_bn, vgg19, vgg19_bn)

__all__ = ["CONFIGS", "PARAMETER_COUNTS", "RECIPES", "Recipe", "VGG", "build_model", "count_parameters",
           "get_recipe", "init_weights", "resolve_config", "to_dense", "vgg11", "vgg11_bn", "vgg13",
           "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn"]
__version__ = "0.1.0"
