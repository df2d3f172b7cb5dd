"""Functional-API model builders and custom layers (uncompiled ``keras.Model``s).

Importing this package registers the custom layers and losses, so ``.keras``
files that use them (the tasks' checkpoints included) load in safe mode.

TensorFlow is imported only where it is used (the GAN and SimCLR train
steps, the decoding searches, the fused batch norm kernel), so the builders
that need only ``keras.ops`` (``fast_cnn``, ``simple_cnn``, ``resnet``,
``transformer_classifier``, ``transformer_seq2seq``...) also build and train
on Keras' JAX backend without TensorFlow installed
(``benchmarks/gpu_jax.py`` times them that way on a GPU).
"""

import keras

from fmkeras.models.backbones import (
    BACKBONE_NAMES,
    PixelPreprocessing,
    backbone,
    image_classifier,
)
from fmkeras.models.cnn import PatchWhitening, adapt_whitening, fast_cnn, mlp, resnet, simple_cnn
from fmkeras.models.dcgan import dcgan_discriminator, dcgan_generator
from fmkeras.models.decoding import beam_search, greedy_search
from fmkeras.models.gan import GAN
from fmkeras.models.losses import SmoothedSparseCrossentropy, text_loss
from fmkeras.models.mlm import mask_tokens, mlm_model
from fmkeras.models.normalization import FusedBatchNormalization
from fmkeras.models.recurrent import gru_classifier, lstm_classifier
from fmkeras.models.simclr import SimCLR, nt_xent_loss
from fmkeras.models.transformer import (
    ClassToken,
    FirstToken,
    MaskedMean,
    PositionalEmbedding,
    TransformerDecoderBlock,
    TransformerEncoderBlock,
    cross_attention_weights,
    transformer_classifier,
    transformer_seq2seq,
)

if keras.backend.backend() == "tensorflow":
    # Text models' TextVectorization layers name fmkeras' standardizer: register it too.
    import fmkeras.data.text  # noqa: F401

__all__ = [
    "BACKBONE_NAMES", "FusedBatchNormalization", "PatchWhitening", "PixelPreprocessing",
    "SimCLR", "SmoothedSparseCrossentropy", "adapt_whitening",
    "backbone", "fast_cnn", "image_classifier",
    "mask_tokens", "mlm_model", "nt_xent_loss", "text_loss",
    "GAN", "ClassToken", "FirstToken", "MaskedMean", "PositionalEmbedding",
    "TransformerDecoderBlock", "TransformerEncoderBlock", "beam_search", "cross_attention_weights",
    "dcgan_discriminator",
    "dcgan_generator",
    "greedy_search", "gru_classifier", "lstm_classifier", "mlp", "resnet", "simple_cnn",
    "transformer_classifier", "transformer_seq2seq",
]
