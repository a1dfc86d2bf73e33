"""The concept explorer of one image: the logit splits exactly over the concepts; the figure.

Tiny random timm models at 32-64 px: a ResNet (bare linear head), timm's test ViT with
average pooling (``fc_norm`` LayerNorm, then the head) and a ConvNeXt (``head.norm``).
"""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from pytorch_grad_cam.utils.image import show_factorization_on_image

from timmlens import ImageInputError, TargetError
from timmlens.analysis import explain_concepts
from timmlens.testing import explainable_model
from timmlens.viz import concept_colors, factorization_overlay, plot_concepts, plot_factorization

matplotlib.use("Agg")
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def _image(side: int) -> torch.Tensor:
    return torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("test_resnet", {}),
        ("test_vit", {"img_size": 64, "global_pool": "avg"}),
        ("test_convnext", {}),
    ],
)
def test_contributions_floor_and_residual_sum_to_the_logit(name, kwargs) -> None:
    model = explainable_model(name, num_classes=10, **kwargs)
    x = _image(64)
    result = explain_concepts(model, x, n_concepts=3)
    with torch.no_grad():
        logits = model(x)
    assert result.target == int(logits.argmax())
    assert result.logit == pytest.approx(float(logits[0, result.target]), abs=1e-5)
    assert result.contributions is not None and result.contributions.shape == (3,)
    assert result.floor is not None and result.residual is not None
    total = float(result.contributions.sum()) + result.floor + result.residual
    assert total == pytest.approx(result.logit, abs=1e-4)
    assert not result.contributions.requires_grad


def test_contributions_by_hand_for_a_linear_head(small) -> None:
    result = explain_concepts(small, _image(64), n_concepts=3, target_class=4)
    factorization = result.factorization
    row = small.fc.weight[4].detach()
    mean_loading = factorization.low_res_maps[0].mean(dim=(1, 2))
    expected = mean_loading * (row @ factorization.basis)
    assert result.target == 4
    assert result.contributions is not None
    assert torch.allclose(result.contributions, expected, atol=1e-5)
    assert result.floor == pytest.approx(
        float(row @ factorization.offset + small.fc.bias[4].detach()), abs=1e-5
    )


def test_class_token_vit_has_maps_but_no_contributions() -> None:
    model = explainable_model("test_vit", num_classes=10, img_size=32)
    result = explain_concepts(model, _image(32), n_concepts=2)
    assert result.contributions is None
    assert "reads the class token" in (result.contributions_unavailable_reason or "")
    assert result.legend_labels() == ["concept 1", "concept 2"]
    assert result.factorization.maps.shape == (1, 2, 32, 32)


def test_figure_renders_with_its_legend(small) -> None:
    result = explain_concepts(small, _image(64), n_concepts=3, top_k=2)
    fig = result.figure(top_k=2)
    FigureCanvasAgg(fig).draw()
    legend_texts = [text.get_text() for text in fig.legends[0].get_texts()]
    assert legend_texts == result.legend_labels(top_k=2)
    assert len(legend_texts) == 3
    assert legend_texts[0].startswith("concept 1: class ")
    assert legend_texts[0].endswith(f"| {float(result.contributions[0]):+.2f}")
    assert fig._suptitle.get_text().startswith(f"{result.target_label}: logit ")
    assert plot_concepts(result).legends  # the viz entry point draws the same


def test_overlay_matches_pgc_show_factorization_on_image(small) -> None:
    result = explain_concepts(small, _image(64), n_concepts=3)
    maps = result.factorization.normalized_maps()[0].numpy()
    picture = result.picture.permute(1, 2, 0).numpy()
    colors = concept_colors(3)
    theirs = show_factorization_on_image(
        picture.copy(), maps.copy(), colors=[np.append(c, 1.0) for c in colors], image_weight=0.5
    )
    ours = factorization_overlay(picture, maps, colors, image_weight=0.5)
    # pgc rounds through uint8 HSV twice; ours blends in float
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 3


def test_one_image_only(small) -> None:
    with pytest.raises(ImageInputError, match="explain_concepts explains one image, got 2"):
        explain_concepts(small, torch.randn(2, 3, 64, 64), n_concepts=2)


def test_callable_target_refused(small) -> None:
    with pytest.raises(TargetError) as info:
        explain_concepts(small, _image(64), n_concepts=2, target_class=lambda logits: logits[:, 0])
    assert str(info.value) == (
        "explain_concepts needs a class index or name, not a callable target."
    )


def test_batch_figure_has_one_legend_for_all_images(small) -> None:
    from timmlens.analysis import deep_feature_factorization

    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    result = deep_feature_factorization(small, x, n_concepts=3)
    fig = plot_factorization(result, list(x.sigmoid()), names=["a", "b"])
    FigureCanvasAgg(fig).draw()
    assert [t.get_text() for t in fig.legends[0].get_texts()] == result.legend_labels(2)
    assert [ax.get_title() for ax in fig.axes] == ["a", "b"]
    # one scale per concept over the batch: its peak is 1 in one image only
    peaks = result.normalized_maps(across_batch=True).amax(dim=(2, 3))
    assert torch.allclose(peaks.amax(dim=0), torch.ones(3), atol=1e-3)
    per_image = result.normalized_maps().amax(dim=(2, 3))
    assert torch.allclose(per_image, torch.ones(2, 3), atol=1e-3)
