"""Channels and classes of a foreign teacher matched to the dataset by name, position or an explicit map."""

from __future__ import annotations

import pytest
import torch

from medkd.errors import ConfigError
from medkd.teachers.adapter import merge_classes
from medkd.teachers.mapping import match_channels, match_classes


def test_channels_are_picked_and_ordered_by_name():
    assert match_channels(["T2", "ADC"], ["adc", "T1", "t2"], "w") == [2, 0]
    assert match_channels(None, ["a", "b"], "w") == [0, 1]


def test_a_channel_the_pipeline_does_not_give_is_named():
    with pytest.raises(ConfigError, match=r"w: the teacher reads channel 'ADC', which data.teacher_channels \['T2'\]"):
        match_channels(["T2", "ADC"], ["T2"], "w")


def test_classes_by_name_by_position_and_by_map():
    assert match_classes(["background", "right", "left"], ["Background", "left", "right"], None, "w") == [[0], [2], [1]]
    assert match_classes(["0", "1"], ["background", "organ"], None, "w") == [[0], [1]]
    merged = match_classes(["0", "1", "2"], ["background", "organ"], {"0": "background", "1": "organ", "2": "organ"},
                           "w")
    assert merged == [[0], [1, 2]]


@pytest.mark.parametrize("teacher, student, label_map, message", [
    (["background", "liver", "tumour"], ["background", "liver"], None, "class 'tumour' matches no class"),
    (["background", "liver"], ["background", "liver", "tumour"], None, "stands for the dataset's class 'tumour'"),
    (["background", "liver"], ["background", "liver"], {"spleen": "liver"}, "'spleen' is not a class of w"),
    (["background", "liver"], ["background", "liver"], {"liver": "kidney"}, "'kidney' is not a class of the dataset"),
])
def test_unmatched_classes_are_one_line_errors(teacher, student, label_map, message):
    with pytest.raises(ConfigError, match=message):
        match_classes(teacher, student, label_map, "w")


def test_merge_classes_reorders_exactly_and_adds_probabilities():
    logits = torch.tensor([[1.0, 2.0, 0.5]]).view(1, 3, 1, 1)
    assert torch.equal(merge_classes(logits, [[0], [2], [1]]), logits[:, [0, 2, 1]])
    merged = merge_classes(logits, [[0], [1, 2]])
    probs = logits.softmax(1)
    expected = torch.stack([probs[:, 0], probs[:, 1] + probs[:, 2]], 1)
    assert torch.allclose(merged.softmax(1), expected, atol=1e-6)
