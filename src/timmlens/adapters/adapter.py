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
from ..models.introspect import forward_trace, unwrap_model
from .layout import Layout, token_layout

LayerSpec = str | nn.Module | Sequence[str | nn.Module] | None

# Modules that come after global pooling: a CAM there has no spatial extent.
_POST_POOL_NAMES = ("head", "fc", "classifier", "global_pool", "head_drop", "fc_norm", "pre_logits")
# Attention modules that mix the model's tokens: a block's ``attn`` (TNT: ``attn_out``; its
# ``attn_in`` mixes the pixels inside one patch, never two patches).
_TOKEN_ATTENTION_NAMES = ("attn", "attn_out")
# Families whose blocks attend over something other than the token sequence, and why.
_NO_ROLLOUT_FAMILIES = {
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


def _windowed(module: nn.Module) -> bool:
    """A block or attention that attends within windows (SAM, Hiera, SAM2's Hiera); an
    integer ``window_size`` (BEiT's tuple is the relative-position grid, not a window)."""
    size = getattr(module, "window_size", None)
    return (isinstance(size, int) and size > 0) or bool(getattr(module, "use_mask_unit_attn", 0))


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
            found = self._feature_module(module_name) if module_name else None
            if found is not None:
                names.append(self._full_name(found))
        return names

    def _feature_module(self, module_name: str) -> str | None:
        """The timm name of a ``feature_info`` module.

        Wrapper models (Gemma4-ViT and other classifiers around an ``encoder``) report
        their encoder's ``feature_info``, whose names are relative to that encoder: a name
        that is not found at the top is taken as the one sub-module path ending in it.
        """
        if self._exists(module_name):
            return module_name
        suffix = f".{module_name}"
        matches = [name for name, _ in self.timm_model.named_modules() if name.endswith(suffix)]
        return matches[0] if len(matches) == 1 else None

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

    @property
    def _last_stage(self) -> str:
        stages = self.feature_stages or [self._full_name("blocks")]
        return stages[-1]

    def _attention_modules(self) -> list[tuple[str, nn.Module]]:
        """Token-mixing attention modules (they own an ``attn_drop``), in forward order."""
        return [
            (name, module)
            for name, module in self.model.named_modules()
            if isinstance(getattr(module, "attn_drop", None), nn.Module)
        ]

    def _class_token_joins_late(self) -> bool:
        """Whether attention runs after the last stage (CaiT's ``blocks_token_only``,
        XCiT's ``cls_attn_blocks``, VOLO's ``post_network``): there the class token enters
        and reads the stage's output patch tokens, so the stage output is live."""
        stage = self._last_stage
        names = list(self.module_names.values())
        if stage not in names:
            return False
        after = names.index(stage)
        inside = f"{stage}."
        return any(
            names.index(name) > after and not name.startswith(inside)
            for name, _ in self._attention_modules()
        )

    def _pre_attention_norm(self) -> str | None:
        """The norm that feeds the last attention of the last stage (a ViT block's
        ``norm1``, TNT's ``norm_out``, CoaT's ``norm14``): its patch tokens reach the
        class token through that attention."""
        stage = self._last_stage
        attention = [n for n, _ in self._attention_modules() if n.startswith(f"{stage}.")]
        if not attention:
            return None
        last = attention[-1]
        parent = last.rpartition(".")[0]
        norms = []
        for name, module in self.model.get_submodule(parent).named_children():
            full = f"{parent}.{name}"
            if full == last:
                break
            if "norm" in name.lower() and not list(module.children()):
                norms.append(full)
        return norms[-1] if norms else None

    # -------------------------------------------------------- default layer
    @cached_property
    def default_layer_reason(self) -> str:
        return self._default_layer()[1]

    @cached_property
    def default_layer(self) -> str:
        """Full name of the layer CAM methods use when none is given."""
        return self._default_layer()[0]

    def _default_layer(self) -> tuple[str, str]:
        if self.uses_class_token_pooling and not self._class_token_joins_late():
            norm = self._pre_attention_norm()
            if norm is not None:
                return (
                    norm,
                    "class-token pooling: the last block's patch tokens get no gradient, "
                    "so CAM taps the input of its last attention",
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
        containers = ("blocks", "stages", "layers")
        # At the top, else inside a wrapper (``encoder.blocks``): the shallowest one.
        found = sorted(
            (name.count("."), containers.index(name.rpartition(".")[2]), name)
            for name, module in (self.timm_model.named_modules() if self.is_timm else ())
            if name.rpartition(".")[2] in containers
            and isinstance(module, (nn.Sequential, nn.ModuleList))
            and len(module)
        )
        if found:
            name = found[0][2]
            return (
                self._last_called(self._full_name(name)),
                f"no feature_info: the last of the model's {name}",
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
            # Convolutions output NCHW even inside channels-last families. Families that
            # do not declare NHWC but run their stages channels-last (VOLO) show it in the
            # shape: the last dimension holds the stage's feature_info channels.
            channels = self._info_of(layer).get("num_chs")
            channels_last = self.is_channels_last or (
                channels is not None and output.shape[-1] == channels != output.shape[1]
            )
            if channels_last and not isinstance(layer, nn.Conv2d):
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

    def _info_of(self, layer: nn.Module) -> dict:
        """The ``feature_info`` entry of the stage ``layer`` is (the stage output itself)."""
        info = getattr(self.timm_model, "feature_info", None) or []
        name = self.module_names.get(layer, "").removeprefix(self.prefix)
        for entry in info:
            if isinstance(entry, dict) and name == str(entry.get("module")):
                return entry
        return {}

    # ----------------------------------------------------------- attention
    @cached_property
    def attention_blocks(self) -> list[AttentionBlock]:
        """Global self-attention modules in forward order; empty when there are none.

        The rule: every token-mixing attention module of the model (one owning an
        ``attn_drop``) is the ``attn`` of one block of a flat sequence of blocks
        (``blocks``, ``encoder.blocks``, CaiT's ``blocks_token_only``), and no block
        attends within windows. Hierarchical models (stages of blocks: Swin, PiT, MViT,
        Twins), windowed ones (SAM, Hiera) and channel attention (XCiT) have none.
        """
        if self.family in _NO_ROLLOUT_FAMILIES:
            return []
        found = [
            (name, module)
            for name, module in self.model.named_modules()
            if isinstance(getattr(module, "attn_drop", None), nn.Module)
            and name.rpartition(".")[2] in _TOKEN_ATTENTION_NAMES
        ]
        if not found or not all(self._in_flat_blocks(name) for name, _ in found):
            return []
        return [AttentionBlock(name, module) for name, module in found]

    def _in_flat_blocks(self, name: str) -> bool:
        """``name`` is ``<path>.<i>.<attn>``: path ends in ``blocks*`` without indices,
        and neither the block nor its attention works in windows. The path is read inside
        the timm model, so a wrapper's own index (``Sequential(normalize, vit)``: ``1.``)
        is no block index."""
        inner = name.removeprefix(self.prefix)
        container, _, rest = inner.rpartition(".")[0].rpartition(".")
        if not rest.isdigit() or not container.rpartition(".")[2].startswith("blocks"):
            return False
        if any(part.isdigit() for part in container.split(".")):
            return False
        block = self.model.get_submodule(name.rpartition(".")[0])
        attention = self.model.get_submodule(name)
        return not any(_windowed(owner) for owner in (block, attention))

    @property
    def readout(self) -> str | None:
        """Which tokens the classifier reads: ``"class"`` (class-token pooling),
        ``"patches"`` (their average), or ``None`` (another pooling, no pooling)."""
        pool = getattr(self.timm_model, "global_pool", None)
        pool = getattr(pool, "pool_type", pool)  # a SelectAdaptivePool2d's kind
        if pool == "token" and self.uses_class_token_pooling:
            return "class"
        if pool in ("avg", "mean"):
            return "patches"
        return None

    @property
    def attention_unavailable_reason(self) -> str | None:
        """Why attention maps do not apply to this model, or ``None`` when they do."""
        if self.attention_blocks:
            return None
        attention = self._attention_modules()
        windowed = any(_windowed(module) for module in self.model.modules())
        named = any(
            "attention" in type(m).__name__.lower() or "attn" in type(m).__name__.lower()
            for m in self.model.modules()
        )
        if self.family in _NO_ROLLOUT_FAMILIES:
            kind = _NO_ROLLOUT_FAMILIES[self.family]
        elif windowed or "swin" in self.family:
            kind = "windowed attention (no token sees all others)"
        elif not attention and named:
            kind = (
                "attention modules without timm's explicit attention path (no attn_drop), "
                "whose probabilities cannot be captured"
            )
        elif not attention:
            kind = "no attention layers"
        else:
            kind = (
                "attention inside a hierarchy of stages or branches (the token set changes "
                "between stages), not one global self-attention per block"
            )
        return (
            f"{self.architecture} ({self.family}) has {kind}, so attention maps and rollout do "
            f"not apply. Use GradCAM (timmlens.interpretation.GradCAM) instead."
        )


def get_adapter(model: nn.Module) -> ModelAdapter:
    """The [`ModelAdapter`][] of ``model`` (``ImageClassifier`` or bare timm model)."""
    return ModelAdapter(model)
