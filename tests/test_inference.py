"""predict_volume / logits_to_probabilities on hand-made pointwise "networks" whose answers are known exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medkd.inference import logits_to_probabilities, predict_volume, predicted_classes


def _pointwise(x: torch.Tensor) -> torch.Tensor:
    """Two-class logits (3x, -3x): class 0 where the image is positive."""
    return torch.cat([3 * x, -3 * x], dim=1)


def _expected(image: torch.Tensor) -> torch.Tensor:
    """Probabilities of :func:`_pointwise` voxel by voxel: softmax(3x, -3x) = (sigmoid(6x), sigmoid(-6x))."""
    return torch.stack([torch.sigmoid(6 * image[0]), torch.sigmoid(-6 * image[0])])


def test_single_logit_is_binary_sigmoid_and_many_are_softmax():
    probs = logits_to_probabilities(torch.tensor([[[0.0, math.log(3.0)]]]))
    assert probs.shape == (1, 2, 2)  # (B, classes, W)
    assert torch.allclose(probs, torch.tensor([[[0.5, 0.25], [0.5, 0.75]]]))
    logits = torch.tensor([[[1.0], [2.0], [3.0]]])
    expected = torch.exp(logits) / torch.exp(logits).sum(dim=1, keepdim=True)
    assert torch.allclose(logits_to_probabilities(logits), expected)


def test_2d_slices_constant_per_slice_keep_their_exact_probabilities():
    values = torch.tensor([1.0, -0.5, 0.0, 2.0, -2.0])
    image = values.view(1, 1, 1, 5).expand(1, 20, 12, 5).clone()  # (C, X, Y, Z)
    seen = []

    def model(x):
        seen.append(tuple(x.shape))
        return _pointwise(x)

    probs = predict_volume(model, image, dim=2, size=(16, 16), batch_size=2)
    assert probs.shape == (2, 20, 12, 5)
    assert seen == [(2, 1, 16, 16), (2, 1, 16, 16), (1, 1, 16, 16)]  # slices resized, batched by 2
    assert torch.allclose(probs, _expected(image), atol=1e-6)
    assert torch.allclose(probs.sum(0), torch.ones(20, 12, 5))


def test_2d_image_without_depth_and_batch_size_do_not_change_the_answer():
    torch.manual_seed(0)
    image = torch.randn(1, 16, 16)
    probs = predict_volume(_pointwise, image, dim=2, size=(16, 16))
    assert probs.shape == (2, 16, 16)
    assert torch.allclose(probs, _expected(image[..., None])[..., 0], atol=1e-6)
    stack = torch.randn(1, 16, 16, 4)
    assert torch.equal(predict_volume(_pointwise, stack, 2, (16, 16), batch_size=1),
                       predict_volume(_pointwise, stack, 2, (16, 16), batch_size=16))


def test_deep_supervision_lists_use_the_full_resolution_head():
    image = torch.ones(1, 16, 16, 1)

    def model(x):
        half = torch.zeros(x.shape[0], 2, 8, 8)
        return [half, _pointwise(x)]

    probs = predict_volume(model, image, dim=2, size=(16, 16))
    assert torch.allclose(probs[0], torch.full((16, 16, 1), torch.sigmoid(torch.tensor(6.0)).item()))


@pytest.mark.parametrize("shape", [(10, 10, 10), (12, 9, 7)])
def test_3d_sliding_window_of_a_pointwise_network_is_exact(shape):
    torch.manual_seed(0)
    image = torch.randn(1, *shape)
    probs = predict_volume(_pointwise, image, dim=3, size=(8, 8, 8), batch_size=2, overlap=0.5)
    assert probs.shape == (2, *shape)
    assert torch.allclose(probs, _expected(image), atol=1e-5)


def test_3d_volume_size_resizes_there_and_back():
    image = torch.full((1, 10, 12, 6), -1.0)
    probs = predict_volume(_pointwise, image, dim=3, size=(4, 4, 4), volume_size=(8, 8, 8))
    assert probs.shape == (2, 10, 12, 6)
    assert torch.allclose(probs[1], torch.full((10, 12, 6), torch.sigmoid(torch.tensor(6.0)).item()), atol=1e-5)


def test_predicted_classes_is_argmax_with_first_maximum_on_ties() -> None:
    probs = torch.rand(4, 9, 7, 3, generator=torch.Generator().manual_seed(0))
    probs[2, :4] = probs[1, :4]  # ties between classes 1 and 2 on part of the grid
    probs[:, 0, 0, 0] = 0.25  # all four tied: class 0
    labels = predicted_classes(probs)
    assert labels.dtype == np.int64 and labels.shape == (9, 7, 3)
    assert np.array_equal(labels, probs.argmax(0).numpy())
    assert labels[0, 0, 0] == 0
