"""Pointing game: hits against a distance-transform reference, boxes, geometry, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import distance_transform_edt

from timmlens.data import ImageGeometry
from timmlens.interpretation.metrics import pointing_game


def _peak(height: int, width: int, row: int, col: int) -> torch.Tensor:
    heatmap = torch.zeros(height, width)
    heatmap[row, col] = 1.0
    return heatmap


def test_hits_equal_the_distance_transform_reference():
    generator = torch.Generator().manual_seed(0)
    heatmaps = torch.rand(32, 40, 48, generator=generator)
    masks = torch.zeros(32, 40, 48, dtype=torch.bool)
    for i in range(32):
        top, left = torch.randint(0, 30, (2,), generator=generator).tolist()
        masks[i, top : top + 8, left : left + 12] = True
    for tolerance in (0, 3, 15):
        result = pointing_game(heatmaps, masks=masks, tolerance=tolerance)
        expected = []
        for heatmap, mask in zip(heatmaps.numpy(), masks.numpy(), strict=True):
            row, col = np.unravel_index(heatmap.argmax(), heatmap.shape)
            # Distance of every pixel to the nearest object pixel (0 inside).
            expected.append(distance_transform_edt(~mask)[row, col] <= tolerance)
        assert result.hits.tolist() == [float(e) for e in expected]
        assert result.value == pytest.approx(np.mean(expected))


def test_tolerance_is_in_pixels_around_the_object():
    mask = torch.zeros(1, 50, 50, dtype=torch.bool)
    mask[0, 10:20, 10:20] = True
    inside, near, far = _peak(50, 50, 15, 15), _peak(50, 50, 15, 34), _peak(50, 50, 15, 35)
    maps = torch.stack([inside, near, far])
    result = pointing_game(maps, masks=mask.expand(3, -1, -1), tolerance=15)
    assert result.hits.tolist() == [1.0, 1.0, 0.0]  # col 34 is 15 px from col 19
    assert result.points.tolist() == [[15, 15], [15, 34], [15, 35]]
    assert pointing_game(maps, masks=mask.expand(3, -1, -1), tolerance=0).hits.tolist() == [
        1.0,
        0.0,
        0.0,
    ]


def test_boxes_any_of_several_and_continuous_coordinates():
    heatmaps = torch.stack([_peak(30, 30, 5, 5), _peak(30, 30, 25, 25)])
    boxes = [[[0, 0, 10, 10], [20, 20, 30, 30]], [[0, 0, 10, 10]]]
    result = pointing_game(heatmaps, boxes=boxes, tolerance=0)
    assert result.hits.tolist() == [1.0, 0.0]
    # Pixel (row 25, col 25) has its centre at (25.5, 25.5): 15.5*sqrt(2) from (10, 10).
    assert pointing_game(heatmaps[1:], boxes=[[0, 0, 10, 10]], tolerance=21.9).hits.item() == 0
    assert pointing_game(heatmaps[1:], boxes=[[0, 0, 10, 10]], tolerance=22.0).hits.item() == 1
    as_tensor = pointing_game(heatmaps, boxes=torch.tensor([[0, 0, 10, 10], [20, 20, 30, 30]]))
    assert as_tensor.hits.tolist() == [1.0, 1.0]


def test_images_without_objects_are_left_out_and_constant_maps_miss():
    heatmaps = torch.stack([_peak(20, 20, 3, 3), torch.ones(20, 20), _peak(20, 20, 3, 3)])
    masks = torch.zeros(3, 20, 20, dtype=torch.bool)
    masks[:2, :10, :10] = True
    result = pointing_game(heatmaps, masks=masks)
    assert result.hits[:2].tolist() == [1.0, 0.0] and math.isnan(result.hits[2])
    assert result.points[1].tolist() == [-1, -1]
    assert float(result) == 0.5 and f"{result:.2f}" == "0.50"
    assert "hit_rate=0.5000" in repr(result)


def test_geometry_maps_heatmaps_onto_the_photo():
    # A 100x200 photo resized to 50x100 and centre-cropped to 50x50 (columns 25..75).
    geometry = ImageGeometry((100, 200), (50, 100), (0, 25, 50, 50))
    heatmap = _peak(50, 50, 25, 0)  # left edge of the crop -> photo column ~50
    on_object = torch.zeros(1, 100, 200, dtype=torch.bool)
    on_object[0, 40:60, 40:60] = True
    result = pointing_game(heatmap, masks=on_object, tolerance=0, geometries=[geometry])
    assert result.hits.tolist() == [1.0]
    row, col = result.points[0].tolist()
    assert 45 <= row <= 55 and 48 <= col <= 54
    # The cropped-away border is NaN on the photo and can never be the maximum.
    assert col >= 50 - 1


def test_errors_say_what_to_pass():
    heatmaps = torch.rand(2, 10, 10)
    with pytest.raises(ValueError, match="exactly one of boxes= or masks="):
        pointing_game(heatmaps)
    with pytest.raises(ValueError, match="exactly one"):
        pointing_game(heatmaps, boxes=[[0, 0, 1, 1]] * 2, masks=torch.ones(2, 10, 10))
    with pytest.raises(ValueError, match="mask 0 has shape"):
        pointing_game(heatmaps, masks=torch.ones(2, 5, 5))
    with pytest.raises(ValueError, match="boxes for 1 images but 2"):
        pointing_game(heatmaps, boxes=[[0, 0, 1, 1]])
    with pytest.raises(ValueError, match="x2 < x1"):
        pointing_game(heatmaps, boxes=[[5, 0, 1, 1], [0, 0, 1, 1]])
    with pytest.raises(ValueError, match="tolerance"):
        pointing_game(heatmaps, masks=torch.ones(2, 10, 10), tolerance=-1)
