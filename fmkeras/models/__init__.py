"""Functional-API model builders and custom layers (uncompiled ``keras.Model``s)."""

from fmkeras.models.cnn import mlp, resnet, simple_cnn

__all__ = ["mlp", "resnet", "simple_cnn"]
