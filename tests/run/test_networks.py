"""build_network / load_network: the zoo network of a run, with saved weights in eval mode."""

from __future__ import annotations

import torch

from medkd.config import ModelConfig
from medkd.run import build_network, load_network
from medkd.weights import save_weights


def test_load_network_restores_the_saved_weights(tmp_path):
    torch.manual_seed(0)
    net = build_network(ModelConfig(name="unet_s1"), 2, 3, 2)
    x = torch.randn(1, 2, 16, 16)
    assert net(x).shape == (1, 3, 16, 16)
    save_weights(tmp_path / "w.safetensors", net.state_dict())
    torch.manual_seed(1)
    loaded = load_network(ModelConfig(name="unet_s1"), 2, 3, 2, tmp_path / "w.safetensors")
    assert not loaded.training
    net.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))
