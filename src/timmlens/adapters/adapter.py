"""Per-family facts about a timm model: where CAM looks, what layers output, attention.

timm already knows most of this: ``feature_info`` names the module at each reduction
point, ``num_prefix_tokens`` and ``patch_embed.grid_size`` describe token layouts,
``output_fmt`` says NHWC. The adapter reads those first; the few family overrides
below each carry a one-line reason.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property

import torch
from torch import nn

from ..errors import LayerResolutionError, UnsupportedModelError
from ..models.wrappers import unwrap_model
from .layout import Layout, token_layout
from .trace import forward_trace

LayerSpec = str | nn.Module | Sequence[str | nn.Module] | None

# Modules that come after global pooling: a CAM there has no spatial extent.
_POST_POOL_NAMES = ("head", "fc", "classifier", "global_pool", "head_drop", "fc_norm", "pre_logits")
# timm modules whose ``forward`` computes attention probabilities we can capture.
_GLOBAL_ATTENTION_FAMILIES = (
    "vision_transformer",
    "deit",
    "eva",
    "beit",
    "vision_transformer_relpos",
)
# ViT-like families whose attention cannot be rolled out from the class token, and why.
_NO_ROLLOUT_FAMILIES = {
    "cait": "class attention only in its last blocks (the patch blocks have no class token)",
    "xcit": "cross-covariance attention between channels, not between tokens",
}


#: what a model without a spatial layer can be explained with instead of a CAM
NO_LAYER_ALTERNATIVE = (
    "explain it with an input method that needs no layer: 'ig', 'saliency' or 'occlusion'"
)


@dataclass(frozen=True)
class ResolvedLayer:
    """A layer of the user's model: its full dotted name and the module."""

    name: str
    module: nn.Module = field(repr=False, compare=False)


@dataclass(frozen=True)
class AttentionBlock:
    """One global self-attention module of a ViT-like model."""

    name: str
    module: nn.Module = field(repr=False, compare=False)


def _family_of(model: nn.Module) -> str:
    return type(model).__module__.rsplit(".", 1)[-1]


def _is_timm(model: nn.Module) -> bool:
    """A timm model (or a subclass of one): its facts (``feature_info``, ...) apply."""
    return any(cls.__module__.startswith("timm.") for cls in type(model).__mro__)


def locate_timm_model(model: nn.Module) -> tuple[nn.Module, str] | None:
    """The timm model inside ``model`` and the prefix of its names, or ``None``.

    ``ImageClassifier`` -> ``(backbone, "backbone.")``; a timm model -> ``(model, "")``;
    ``nn.Sequential(normalize, timm_model)`` -> ``(timm_model, "1.")`` (its last timm
    child, also an ``ImageClassifier`` there).
    """
    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, nn.Module) and _is_timm(backbone):
        return backbone, "backbone."
    if _is_timm(model):
        return model, ""
    if isinstance(model, nn.Sequential):
        for name, child in reversed(list(model.named_children())):
            found = locate_timm_model(child)
            if found is not None:
                return found[0], f"{name}.{found[1]}"
    return None


class ModelAdapter:
    """Everything timmlens needs to know about where to look inside ``model``.

    Any other classifier works too: a torchvision model or a plain ``nn.Module`` CNN
    (its CAM layer is found by tracing one forward, `trace`), any of them inside
    ``nn.Sequential`` (``Sequential(normalize, model)``: timm facts still apply),
    ``DataParallel``, DDP or ``torch.compile`` (the module inside is explained).

    Args:
        model: an ``ImageClassifier`` (names start with ``backbone.``), a bare timm
            model, or any image classifier ``nn.Module``.
    """

    def __init__(self, model: nn.Module) -> None:
        model = unwrap_model(model, warn=False)  # the explainers warn about compile
        self.model = model
        located = locate_timm_model(model)
        #: whether timm's facts (feature_info, token layout, attention) describe the model
        self.is_timm = located is not None
        self.timm_model, self.prefix = located if located is not None else (model, "")
        self.family = _family_of(self.timm_model)
        self.architecture = str(
            getattr(self.timm_model, "pretrained_cfg", {}).get("architecture")
            or type(self.timm_model).__name__
        )

    # ---------------------------------------------------------------- names
    @cached_property
    def module_names(self) -> dict[nn.Module, str]:
        names: dict[nn.Module, str] = {}
        for name, module in self.model.named_modules():
            names.setdefault(module, name)
        return names

    def _full_name(self, timm_name: str) -> str:
        return f"{self.prefix}{timm_name}" if timm_name else self.prefix.rstrip(".")

    @cached_property
    def feature_stages(self) -> list[str]:
        """Full names of the modules at timm's ``feature_info`` reduction points."""
        info = getattr(self.timm_model, "feature_info", None) or []
        names = []
        for entry in info:
            module_name = entry.get("module") if isinstance(entry, dict) else None
            if module_name and self._exists(module_name):
                names.append(self._full_name(module_name))
        return names

    def _exists(self, timm_name: str) -> bool:
        try:
            self.timm_model.get_submodule(timm_name)
        except AttributeError:
            return False
        return True

    # ------------------------------------------------------- token geometry
    @property
    def num_prefix_tokens(self) -> int:
        """Class, distillation and register tokens before the patch tokens."""
        return int(getattr(self.timm_model, "num_prefix_tokens", 0) or 0)

    @property
    def patch_grid(self) -> tuple[int, int] | None:
        embed = getattr(self.timm_model, "patch_embed", None)
        grid = getattr(embed, "grid_size", None)
        return (int(grid[0]), int(grid[1])) if grid is not None else None

    @property
    def is_channels_last(self) -> bool:
        return str(getattr(self.timm_model, "output_fmt", "NCHW")) == "NHWC"

    @property
    def uses_class_token_pooling(self) -> bool:
        has_class_token = self.num_prefix_tokens > 0 or any(
            name.startswith("cls_token") for name, _ in self.timm_model.named_parameters()
        )
        return getattr(self.timm_model, "global_pool", None) == "token" and has_class_token

    def _last_norm1(self) -> str | None:
        """The last ``norm1`` (a block's pre-attention norm) inside the last stage."""
        stages = self.feature_stages or [self._full_name("blocks")]
        last_stage = stages[-1]
        names = [
            name
            for name in self.module_names.values()
            if name.startswith(f"{last_stage}.") and name.endswith("norm1")
        ]
        return names[-1] if names else None

    # -------------------------------------------------------- default layer
    @cached_property
    def default_layer_reason(self) -> str:
        return self._default_layer()[1]

    @cached_property
    def default_layer(self) -> str:
        """Full name of the layer CAM methods use when none is given."""
        return self._default_layer()[0]

    def _default_layer(self) -> tuple[str, str]:
        if self.uses_class_token_pooling:
            norm1 = self._last_norm1()
            if norm1 is not None:
                return (
                    norm1,
                    "class-token pooling: the last block's patch tokens get no gradient, "
                    "so CAM taps the input of its attention",
                )
        if self.family == "efficientnet" and self._exists("conv_head"):
            return (
                self._full_name("conv_head"),
                "EfficientNet's 1x1 head conv (the recipes' layer) sees the most channels "
                "before pooling",
            )
        if self.feature_stages:
            return self._last_called(
                self.feature_stages[-1]
            ), "the last stage in timm's feature_info"
        for container in ("blocks", "stages", "layers") if self.is_timm else ():
            module = getattr(self.timm_model, container, None)
            if isinstance(module, (nn.Sequential, nn.ModuleList)) and len(module):
                return (
                    self._last_called(self._full_name(container)),
                    f"no feature_info: the last of the model's {container}",
                )
        # Not timm (torchvision, a plain CNN), or timm without the facts: one forward shows.
        try:
            call = forward_trace(self.model).last_spatial_layer()
        except LayerResolutionError as exc:
            raise LayerResolutionError(
                f"{self.architecture}: {exc} Or {NO_LAYER_ALTERNATIVE}."
            ) from exc
        except UnsupportedModelError as exc:  # the traced forward itself failed
            raise LayerResolutionError(
                f"{self.architecture}: no default CAM layer could be traced: {exc} Pass "
                f"target_layer= with a layer whose output is a feature map, or "
                f"{NO_LAYER_ALTERNATIVE}."
            ) from exc
        assert call.shape is not None
        return (
            call.name,
            f"traced one forward: the last layer with a spatial output "
            f"({call.shape[2]}x{call.shape[3]} for a {forward_trace(self.model).input_shape[-1]}"
            f" px input) before global pooling",
        )

    @cached_property
    def activation_layer(self) -> str:
        """The layer gradient-free CAMs read by default (ScoreCAM, AblationCAM, EigenCAM,
        RandomCAM): [`default_layer`][], or the norm-activation module right after it
        where the default layer is a bare convolution (its output then is pre-norm).

        Gradient CAMs weight channels by signed gradients, so a pre-norm, signed output
        works for them. Methods that use the activations themselves as evidence (masks,
        ablations, principal components, positive weights) need the activations the
        network passes on: EfficientNet's ``conv_head`` output is 70% negative on chelsea
        (real Lite0), and ScoreCAM's positive, softmaxed weights turn it into an all-negative
        map that the ReLU zeroes; its ``bn2`` (``BatchNormAct2d``) output is what the
        pooling reads. The rule: a ``Conv2d`` default layer whose next sibling (timm
        registers modules in call order) is a batch norm with a non-identity ``act``.
        """
        name = self.default_layer
        return self._norm_act_after(name) or name

    def _norm_act_after(self, name: str) -> str | None:
        """The fused norm + activation that follows conv ``name``, if any (see above)."""
        if not isinstance(self.model.get_submodule(name), nn.Conv2d):
            return None
        parent_name, _, child = name.rpartition(".")
        siblings = list(self.model.get_submodule(parent_name).named_children())
        index = [key for key, _ in siblings].index(child)
        if index + 1 >= len(siblings):
            return None
        key, follower = siblings[index + 1]
        act = getattr(follower, "act", None)
        is_norm = isinstance(follower, nn.modules.batchnorm._NormBase)
        if is_norm and isinstance(act, nn.Module) and not isinstance(act, nn.Identity):
            return f"{parent_name}.{key}" if parent_name else key
        return None

    def _last_called(self, name: str) -> str:
        """``name``, or its last element while it is a ``ModuleList`` (never called itself)."""
        module = self.model.get_submodule(name)
        while isinstance(module, nn.ModuleList) and len(module):
            name, module = f"{name}.{len(module) - 1}", module[len(module) - 1]
        return name

    @property
    def recommended_layers(self) -> list[str]:
        """Good CAM layers, latest first: the default, then timm's stages."""
        try:
            default = [self.default_layer]
        except LayerResolutionError:
            default = []
        stages = [name for name in reversed(self.feature_stages) if name not in default]
        return default + stages

    # ------------------------------------------------------ user overrides
    def resolve_layers(self, target: LayerSpec = None) -> list[ResolvedLayer]:
        """Resolve ``target_layer`` (name, module, list of them, or ``None``) to layers.

        Raises:
            LayerResolutionError: unknown name (closest names listed), a module that is
                not part of the model, or a layer after global pooling.
        """
        if target is None:
            target = self.default_layer
        if isinstance(target, (str, nn.Module)):
            items = [target]
        elif isinstance(target, (list, tuple)):
            items = list(target)
        else:
            raise LayerResolutionError(
                f"target_layer must be a dotted name, a module of the model, a list of them, "
                f"or None for the family's default; got {type(target).__name__} {target!r}. "
                f"Recommended CAM layers for this family: "
                f"{', '.join(self.recommended_layers[:4])}."
            )
        if not items:
            raise LayerResolutionError("target_layer is an empty list; give at least one layer.")
        return [self._resolve_one(item) for item in items]

    def _resolve_one(self, item: str | nn.Module) -> ResolvedLayer:
        if isinstance(item, nn.Module):
            name = self.module_names.get(item)
            if name is None:
                raise LayerResolutionError(
                    f"The module {type(item).__name__} passed as target_layer is not part of "
                    f"this model. Pass a module of the model itself or its dotted name."
                )
            return self._checked(ResolvedLayer(name, item))
        if not isinstance(item, str):
            raise LayerResolutionError(
                f"target_layer must be a dotted name, a module or a list of them, "
                f"got {type(item).__name__}."
            )
        candidates = [item]
        if self.prefix and not item.startswith(self.prefix):
            candidates.append(self.prefix + item)  # "layer4" means "backbone.layer4"
        if not self.prefix and item.startswith("backbone."):
            candidates.append(item.removeprefix("backbone."))  # recipe names on a bare model
        for name in candidates:
            name = name.replace("[", ".").replace("]", "")  # blocks[-1] -> blocks.-1
            name = self._normalise_negative_indices(name)
            try:
                return self._checked(ResolvedLayer(name, self.model.get_submodule(name)))
            except AttributeError:
                continue
        close = difflib.get_close_matches(item, [n for n in self.module_names.values() if n], n=5)
        raise LayerResolutionError(
            f"No layer named '{item}' in {self.architecture}."
            + (f" Closest names: {', '.join(close)}." if close else "")
            + f" Recommended CAM layers for this family: {', '.join(self.recommended_layers[:4])}."
        )

    def _normalise_negative_indices(self, name: str) -> str:
        parts, module = [], self.model
        for part in name.split("."):
            if part.lstrip("-").isdigit() and int(part) < 0 and hasattr(module, "__len__"):
                part = str(len(module) + int(part))
            parts.append(part)
            module = getattr(module, "_modules", {}).get(part, module)
        return ".".join(parts)

    def _checked(self, layer: ResolvedLayer) -> ResolvedLayer:
        leaf = layer.name.rsplit(".", 1)[-1]
        if leaf in _POST_POOL_NAMES:
            raise LayerResolutionError(
                f"Layer '{layer.name}' comes after global pooling (or is the classifier), so "
                f"its output has no spatial extent to show. {self._layer_advice()}"
            )
        return layer

    @contextmanager
    def layer_errors_of(self, method: str) -> Iterator[None]:
        """Layer errors raised inside say which method (and family) they are about."""
        try:
            yield
        except LayerResolutionError as exc:
            prefix = f"{method} (family '{self.family}'): "
            if str(exc).startswith(prefix):
                raise
            raise LayerResolutionError(prefix + str(exc)) from exc

    def _layer_advice(self) -> str:
        """What to use instead of a layer without a spatial map."""
        layers = self.recommended_layers[:3]
        if layers:
            return f"Use a layer before pooling, e.g. {', '.join(layers)}."
        return f"This model names no layer with a spatial map: {NO_LAYER_ALTERNATIVE}."

    # ------------------------------------------------------------ layouts
    def layout_for(
        self, output: torch.Tensor, input_hw: tuple[int, int] | None, layer: nn.Module
    ) -> Layout:
        """The `Layout` of a live layer output (see `layout`)."""
        name = self.module_names.get(layer, type(layer).__name__)
        if output.ndim == 4:
            # Convolutions output NCHW even inside channels-last families.
            if self.is_channels_last and not isinstance(layer, nn.Conv2d):
                return Layout("NHWC", (output.shape[1], output.shape[2]))
            return Layout("NCHW", (output.shape[2], output.shape[3]))
        if output.ndim == 3:
            return token_layout(
                output.shape[1], self.grid_hints(input_hw, layer), self.num_prefix_tokens, name
            )
        raise LayerResolutionError(
            f"Layer '{name}' outputs shape {tuple(output.shape)}, which has no spatial grid "
            f"(it comes after pooling?). {self._layer_advice()}"
        )

    def grid_hints(
        self, input_hw: tuple[int, int] | None, layer: nn.Module
    ) -> list[tuple[int, int]]:
        """Candidate patch grids for a token layer, most specific first."""
        hints: list[tuple[int, int]] = []
        embed = getattr(self.timm_model, "patch_embed", None)
        if input_hw is not None and embed is not None and hasattr(embed, "dynamic_feat_size"):
            try:
                grid = embed.dynamic_feat_size(input_hw)
                hints.append((int(grid[0]), int(grid[1])))
            except (TypeError, AttributeError):
                pass
        if self.patch_grid is not None:
            hints.append(self.patch_grid)
        reduction = self._reduction_of(layer)
        if input_hw is not None and reduction:
            # Hierarchical token models (PiT, ...) shrink the grid stage by stage.
            hints.append((-(-input_hw[0] // reduction), -(-input_hw[1] // reduction)))
        return hints

    def _reduction_of(self, layer: nn.Module) -> int | None:
        info = getattr(self.timm_model, "feature_info", None) or []
        name = self.module_names.get(layer, "").removeprefix(self.prefix)
        for entry in info:
            if isinstance(entry, dict) and name.startswith(str(entry.get("module"))):
                return int(entry["reduction"])
        return int(info[-1]["reduction"]) if info and isinstance(info[-1], dict) else None

    # ----------------------------------------------------------- attention
    @cached_property
    def attention_blocks(self) -> list[AttentionBlock]:
        """Global self-attention modules (in order), empty for CNNs and windowed models."""
        if self.family in _NO_ROLLOUT_FAMILIES:
            return []
        if self.family not in _GLOBAL_ATTENTION_FAMILIES and not self._looks_like_vit():
            return []
        blocks = []
        for name, module in self.model.named_modules():
            if (
                hasattr(module, "fused_attn")
                and hasattr(module, "attn_drop")
                and name.endswith(".attn")
            ):
                blocks.append(AttentionBlock(name, module))
        return blocks

    def _looks_like_vit(self) -> bool:
        return self.num_prefix_tokens > 0 and isinstance(
            getattr(self.timm_model, "blocks", None), nn.Sequential
        )

    @property
    def attention_unavailable_reason(self) -> str | None:
        """Why attention maps do not apply to this model, or ``None`` when they do."""
        if self.attention_blocks:
            return None
        if self.family in _NO_ROLLOUT_FAMILIES:
            kind = _NO_ROLLOUT_FAMILIES[self.family]
        elif self.is_channels_last or "swin" in self.family:
            kind = "windowed attention (no token sees all others)"
        elif hasattr(self.timm_model, "blocks") or hasattr(self.timm_model, "stages"):
            kind = "no global self-attention with a class token"
        else:
            kind = "no attention layers"
        return (
            f"{self.architecture} ({self.family}) has {kind}, so attention maps and rollout do "
            f"not apply. Use GradCAM (timmlens.interpretation.GradCAM) instead."
        )


def get_adapter(model: nn.Module) -> ModelAdapter:
    """The [`ModelAdapter`][] of ``model`` (``ImageClassifier`` or bare timm model)."""
    return ModelAdapter(model)
