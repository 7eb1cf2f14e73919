"""Efficiency: input-size parsing, FLOPs against an independent count, checkpoint size, latency, tables."""

from __future__ import annotations

import math
import time

import pytest
import torch
from torch import nn

from medkd.errors import ConfigError
from medkd.measure import machine
from medkd.models import count_parameters, create_model
from medkd.models.efficiency import (
    checkpoint_bytes,
    count_flops,
    cpu_latency_ms,
    efficiency_table,
    machine_info,
    measure,
    parse_input_size,
    render_markdown,
)


def test_parse_input_size():
    assert parse_input_size("1x256x256") == (1, (256, 256))
    assert parse_input_size("4x64x64x64") == (4, (64, 64, 64))
    assert parse_input_size(" 3X32x48 ") == (3, (32, 48))
    for bad in ("256x256", "1x256x256x256x2", "1xax256", "", "1x0x256", "1x-2x4"):
        with pytest.raises(ConfigError, match="input size"):
            parse_input_size(bad)


def _conv_flops_by_hand(model: nn.Module, x: torch.Tensor) -> int:
    """2 x multiply-accumulates of every (transposed) convolution, from its hooked input / output shapes."""
    total = 0

    def hook(m, inputs, out):
        nonlocal total
        k = math.prod(m.kernel_size)
        if isinstance(m, nn.modules.conv._ConvTransposeNd):
            total += 2 * inputs[0].numel() * (m.out_channels // m.groups) * k
        else:
            total += 2 * out.numel() * (m.in_channels // m.groups) * k

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return total


@pytest.mark.parametrize("name, size", [("unet_s1", (32, 32)), ("espnet", (32, 48)), ("enet", (32, 32))])
def test_flops_match_an_independent_count(name, size):
    model = create_model(name, 1, 2).eval()
    x = torch.randn(1, 1, *size)
    assert count_flops(model, x) == _conv_flops_by_hand(model, x)


def test_flops_unet_s1_golden_value():
    # by hand, 3 in / 1 out at 16x16 (H, W) - conv FLOPs = 2 * Cin * Cout * k * H_out * W_out
    hw = 16 * 16
    expected = 2 * (
        3 * 16 * 9 * hw  # E1
        + 16 * 32 * 9 * hw // 4  # E2 at H/2
        + 32 * 64 * 9 * hw // 16  # bottleneck at H/4
        + 64 * 32 * 4 * hw // 16  # transposed 2x2: per input pixel
        + 64 * 32 * 9 * hw // 4  # D1 on the concatenation
        + 32 * 16 * 4 * hw // 4
        + 32 * 16 * 9 * hw  # D2
        + 16 * 1 * hw  # 1x1 classifier
    )
    assert count_flops(create_model("unet_s1", 3, 1).eval(), torch.zeros(1, 3, 16, 16)) == expected


def test_checkpoint_size_is_about_four_bytes_per_parameter():
    model = create_model("unet_s1", 1, 2)
    n_state = sum(t.numel() for t in model.state_dict().values() if t.is_floating_point())
    size = checkpoint_bytes(model)
    assert 4 * n_state <= size <= 4 * n_state + 64 * 1024  # float32 data + a JSON header


def test_measure_row():
    row = measure("unet_s1", input_size=(32, 32), repeats=3, warmup=1, threads=1)
    assert row["name"] == "unet_s1" and row["role"] == "student" and row["input"] == "1x32x32"
    assert row["params"] == count_parameters(create_model("unet_s1", 1, 2))
    model = create_model("unet_s1", 1, 2).eval()
    assert row["flops"] == count_flops(model, torch.zeros(1, 1, 32, 32))  # meta and real devices agree
    assert row["gflops"] == round(row["flops"] / 1e9, 4) and row["gmacs"] == round(row["flops"] / 2e9, 4)
    assert row["threads"] == 1 and row["repeats"] == 3
    assert 0 < row["latency_ms_min"] <= row["latency_ms_median"] <= row["latency_ms_max"]
    assert row["checkpoint_mb"] == pytest.approx(row["params"] * 4 / 2**20, rel=0.05)


class _Sleepy(nn.Module):
    """Sleeps 10 ms per forward pass and counts the passes."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        time.sleep(0.01)
        return x


def test_cpu_latency_times_repeats_after_warmup():
    model = _Sleepy()
    times = cpu_latency_ms(model, torch.zeros(1), repeats=3, warmup=2)
    assert model.calls == 5 and len(times) == 3 and min(times) >= 10.0


def test_measure_without_latency_uses_meta_and_scales_with_area():
    small = measure("multitask_unet", input_size=(64, 64), latency=False)
    big = measure("multitask_unet", input_size=(128, 128), latency=False)
    assert "latency_ms_median" not in small
    assert big["flops"] == 4 * small["flops"]  # fully convolutional
    assert small["params"] == 43_234_819


def test_measure_3d():
    row = measure("kdnet3d", input_size=(32, 32, 32), latency=False, base_features=4)
    assert row["spatial_dims"] == 3 and row["input"] == "1x32x32x32"


def test_render_markdown_and_machine_info():
    rows = efficiency_table(["unet_s1", "unet_s2"], (32, 32), repeats=1, warmup=0)
    info = machine_info()
    assert machine_info is machine.machine_info  # one machine description, in medkd.measure
    assert {"cpu", "torch", "torch_threads", "logical_cores"} <= set(info)
    md = render_markdown(rows, title="t", machine=info, note="shared CPU")
    lines = md.splitlines()
    assert lines[0] == "# t"
    assert lines[2].startswith("| model | role | input | params")
    assert any(line.startswith("| unet_s2 | student | 1x32x32 |") for line in lines)
    assert "2 FLOPs per multiply-accumulate" in md and "shared CPU" in md
    assert lines[3] == "|---|---|" + "---:|" * 9
    assert md.splitlines()[-3] == "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()) + "."
