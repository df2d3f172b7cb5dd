"""Functional-API model builders and custom layers (uncompiled ``keras.Model``s).

Importing this package registers the custom layers, so ``.keras`` files that
use them load in safe mode.
"""

from fmkeras.models.cnn import mlp, resnet, simple_cnn
from fmkeras.models.dcgan import dcgan_discriminator, dcgan_generator
from fmkeras.models.decoding import beam_search, greedy_search
from fmkeras.models.gan import GAN
from fmkeras.models.recurrent import gru_classifier, lstm_classifier
from fmkeras.models.transformer import (
    ClassToken,
    FirstToken,
    PositionalEmbedding,
    TransformerDecoderBlock,
    TransformerEncoderBlock,
    transformer_classifier,
    transformer_seq2seq,
)

__all__ = [
    "GAN", "ClassToken", "FirstToken", "PositionalEmbedding", "TransformerDecoderBlock",
    "TransformerEncoderBlock", "beam_search", "dcgan_discriminator", "dcgan_generator",
    "greedy_search", "gru_classifier", "lstm_classifier", "mlp", "resnet", "simple_cnn",
    "transformer_classifier", "transformer_seq2seq",
]
