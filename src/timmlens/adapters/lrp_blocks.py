"""Which timm CNN modules LRP through Zennit can read, by the arithmetic of their forward.

Zennit puts a rule on each *leaf* module it knows (convolution, linear, BatchNorm, pooling,
activation). What a non-leaf module's own ``forward`` computes between its children is
plain autograd, which LRP cannot read unless a canonizer rules it. The canonizers of
`timmlens.interpretation.input.zennit_rules` rule three kinds of arithmetic, for any
module: a sum of two tensors (residual adds, Res2Net's hierarchical adds), a product with
a per-channel factor (squeeze-excite gates, ConvNeXt's layer scale), and concatenation,
splits and reshapes (DenseNet, DLA roots, Res2Net). The tables below name the timm
modules whose forward does *only* that (read in timm 1.0's source), so a model built of
them and of leaves with rules can be explained; any other module makes ``lrp`` refuse
the model with its name.

Names are ``module.qualname`` of the class (`relevance_rules.qualname`).
"""

from __future__ import annotations

from torch import nn

from .relevance_rules import qualname

#: containers that only run their children one after another (in eval mode)
LRP_CHAINS = frozenset(
    {
        "torch.nn.modules.container.Sequential",
        "torch.nn.modules.container.ModuleList",
        "torch.nn.modules.container.ModuleDict",
        "timm.layers.classifier.ClassifierHead",
        "timm.layers.classifier.NormMlpClassifierHead",  # pool, norm, flatten, mlp, fc
        "timm.layers.conv_bn_act.ConvNormAct",
        "timm.layers.adaptive_avgmax_pool.SelectAdaptivePool2d",
        "timm.layers.mlp.Mlp",
        "timm.models.convnext.Downsample",  # average pool, 1x1 conv
        "timm.models.vgg.ConvMlp",  # conv, act, dropout, conv, act
        "timm.models.densenet.DenseTransition",  # norm, conv, pool (a Sequential)
    }
)

#: models and blocks whose forward adds, gates, concatenates, splits or reshapes only
LRP_BLOCKS = frozenset(
    {
        # ResNet / ResNeXt / SE-ResNet (resnet.py): ``x += shortcut``
        "timm.models.resnet.ResNet",
        "timm.models.resnet.BasicBlock",
        "timm.models.resnet.Bottleneck",
        # Res2Net (a ResNet of Bottle2neck): split, hierarchical adds, concat, residual add
        "timm.models.res2net.Bottle2neck",
        # RegNetX / Y / Z: ``drop_path(x) + downsample(shortcut)``, SE gates
        "timm.models.regnet.RegNet",
        "timm.models.regnet.RegStage",
        "timm.models.regnet.Bottleneck",
        "timm.models.regnet.PreBottleneck",
        # DLA: residual adds in blocks and roots, concatenations in roots
        "timm.models.dla.DLA",
        "timm.models.dla.DlaBasic",
        "timm.models.dla.DlaBottleneck",
        "timm.models.dla.DlaBottle2neck",
        "timm.models.dla.DlaRoot",
        "timm.models.dla.DlaTree",
        # ConvMixer: ``fn(x) + x``
        "timm.models.convmixer.ConvMixer",
        "timm.models.convmixer.Residual",
        # DenseNet: concatenations
        "timm.models.densenet.DenseNet",
        "timm.models.densenet.DenseBlock",
        "timm.models.densenet.DenseLayer",
        # ConvNeXt: permutes, layer scale ``x * gamma``, residual add
        "timm.models.convnext.ConvNeXt",
        "timm.models.convnext.ConvNeXtStage",
        "timm.models.convnext.ConvNeXtBlock",
        # VGG: a chain (its ConvMlp pools functionally below 7x7 inputs: average weights)
        "timm.models.vgg.VGG",
        # EfficientNet / MobileNetV3 / HardCoReNAS: ``drop_path(x) + shortcut``, SE gates
        "timm.models.efficientnet.EfficientNet",
        "timm.models.mobilenetv3.MobileNetV3",
        "timm.models._efficientnet_blocks.ConvBnAct",
        "timm.models._efficientnet_blocks.DepthwiseSeparableConv",
        "timm.models._efficientnet_blocks.InvertedResidual",
        "timm.models._efficientnet_blocks.EdgeResidual",
        # squeeze-excite: ``x * gate(pool(x))``
        "timm.models._efficientnet_blocks.SqueezeExcite",
        "timm.layers.squeeze_excite.SEModule",
        "timm.layers.squeeze_excite.EffectiveSEModule",
    }
)

#: normalisations over the channels of an NCHW tensor (the others normalise the last axes)
CHANNELS_FIRST_NORMS = frozenset({"timm.layers.norm.LayerNorm2d"})


def is_lrp_container(module: nn.Module) -> bool:
    """Whether ``module``'s own forward is arithmetic the LRP canonizers rule."""
    return qualname(module) in LRP_CHAINS or qualname(module) in LRP_BLOCKS


def normalised_dims(module: nn.Module, ndim: int) -> tuple[int, ...]:
    """The axes a LayerNorm-like ``module`` normalises over, for an input of ``ndim`` axes."""
    if qualname(module) in CHANNELS_FIRST_NORMS:
        return (1,)
    shape = getattr(module, "normalized_shape", (0,))
    return tuple(range(ndim - len(shape), ndim))
