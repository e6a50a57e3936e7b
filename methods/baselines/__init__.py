"""Baseline networks, one family per file; each import registers that family's models with timm."""

from methods.baselines.resnet_cifar import *  # noqa: F401,F403
