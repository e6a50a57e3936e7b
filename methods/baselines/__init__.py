"""Baseline networks, one family per file; each import registers that family's models with timm."""

from methods.baselines.binarynet import *  # noqa: F401,F403
from methods.baselines.birealnet import *  # noqa: F401,F403
from methods.baselines.resnet_cifar import *  # noqa: F401,F403
from methods.baselines.xnornet import *  # noqa: F401,F403
from methods.baselines.xnornet_pp import *  # noqa: F401,F403
