"""Small real teachers of every kind, written on the fly: an nnU-Net v2 results folder (nnU-Net's plans format and
architecture classes), a MONAI bundle, a TorchScript file and an ONNX file."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("dynamic_network_architectures")

#: The architecture entry of a tiny 2D plan, as nnU-Net v2 (>= 2.4) writes it in plans.json.
ARCHITECTURE_2D = {
    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "arch_kwargs": {
        "n_stages": 3, "features_per_stage": [4, 8, 16], "conv_op": "torch.nn.modules.conv.Conv2d",
        "kernel_sizes": [[3, 3], [3, 3], [3, 3]], "strides": [[1, 1], [2, 2], [2, 2]],
        "n_conv_per_stage": [1, 1, 1], "n_conv_per_stage_decoder": [1, 1], "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d", "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    },
    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
}

CT_PROPS = {"max": 900.0, "mean": 40.0, "median": 35.0, "min": -1000.0, "percentile_00_5": -100.0,
            "percentile_99_5": 300.0, "std": 80.0}


def nnunet_plans(schemes: list[str]) -> dict:
    """A plans.json of nnU-Net v2's schema: a 2d configuration and one inheriting from it."""
    config_2d = {
        "data_identifier": "nnUNetPlans_2d", "preprocessor_name": "DefaultPreprocessor", "batch_size": 12,
        "patch_size": [32, 32], "median_image_size_in_voxels": [48.0, 48.0], "spacing": [1.0, 1.0],
        "normalization_schemes": schemes, "use_mask_for_norm": [False] * len(schemes),
        "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": ARCHITECTURE_2D, "batch_dice": True,
    }
    return {
        "dataset_name": "Dataset901_Tiny", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [1.0, 1.0, 1.0],
        "original_median_shape_after_transp": [1, 48, 48], "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "configurations": {"2d": config_2d, "2d_big_batch": {"inherits_from": "2d", "batch_size": 24}},
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {str(i): CT_PROPS for i in range(len(schemes))},
    }


def build_plain_unet(in_channels: int, num_classes: int, deep_supervision: bool = False, seed: int = 0) -> nn.Module:
    """The plan's network, built directly with dynamic-network-architectures (the reference)."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    kw = dict(ARCHITECTURE_2D["arch_kwargs"])
    kw.update(conv_op=nn.Conv2d, norm_op=nn.InstanceNorm2d, nonlin=nn.LeakyReLU, dropout_op=None)
    torch.manual_seed(seed)
    net = PlainConvUNet(input_channels=in_channels, num_classes=num_classes, deep_supervision=deep_supervision, **kw)
    with torch.no_grad():  # non-trivial norm affines, so that a weight that failed to load would show
        for m in net.modules():
            if isinstance(m, nn.InstanceNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net.eval()


def nnunet_checkpoint(net: nn.Module, plans: dict, dataset: dict, configuration: str = "2d") -> dict:
    """A checkpoint laid out like nnUNetTrainer.save_checkpoint's (NumPy scalars in logs, a torch.device)."""
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.99, nesterov=True)
    return {
        "network_weights": net.state_dict(), "optimizer_state": opt.state_dict(), "grad_scaler_state": None,
        "logging": {"mean_fg_dice": [np.float64(0.5)], "ema_fg_dice": [np.float64(0.5)],
                    "dice_per_class_or_region": [[np.float64(0.4), np.float64(0.6)]], "train_losses": [0.3],
                    "val_losses": [0.2], "lrs": [0.01], "epoch_start_timestamps": [1.0],
                    "epoch_end_timestamps": [2.0]},
        "_best_ema": np.float64(0.5), "current_epoch": 1,
        "init_args": {"plans": plans, "configuration": configuration, "fold": 0, "dataset_json": dataset,
                      "device": torch.device("cpu")},
        "trainer_name": "nnUNetTrainer", "inference_allowed_mirroring_axes": (0, 1),
    }


def write_nnunet_folder(root: Path, channels: list[str], labels: dict[str, int],
                        schemes: list[str] | None = None, configuration: str = "2d", seed: int = 0
                        ) -> tuple[Path, nn.Module]:
    """``root/Dataset901_Tiny/nnUNetTrainer__nnUNetPlans__<configuration>`` with fold_0; returns it and the net."""
    schemes = schemes or ["ZScoreNormalization"] * len(channels)
    plans = nnunet_plans(schemes)
    dataset = {"channel_names": {str(i): c for i, c in enumerate(channels)}, "labels": labels, "numTraining": 8,
               "file_ending": ".nii.gz"}
    folder = root / "Dataset901_Tiny" / f"nnUNetTrainer__nnUNetPlans__{configuration}"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans, indent=2))
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
    (folder / "dataset_fingerprint.json").write_text(json.dumps({"spacings": [[1.0, 1.0, 1.0]]}))
    net = build_plain_unet(len(channels), len(labels), seed=seed)
    torch.save(nnunet_checkpoint(net, plans, dataset, configuration), folder / "fold_0" / "checkpoint_final.pth")
    return folder, net


def write_bundle(root: Path, channel: str, classes: list[str], seed: int = 0) -> tuple[Path, nn.Module]:
    """A tiny MONAI bundle (configs/inference.json, configs/metadata.json, models/model.pt) and its network."""
    from monai.networks.nets import UNet

    net_def = {"_target_": "UNet", "spatial_dims": 2, "in_channels": 1, "out_channels": len(classes),
               "channels": [4, 8], "strides": [2], "num_res_units": 0}
    meta = {"version": "0.1.0", "network_data_format": {
        "inputs": {"image": {"type": "image", "num_channels": 1, "spatial_shape": [32, 32],
                             "channel_def": {"0": channel}}},
        "outputs": {"pred": {"type": "image", "num_channels": len(classes), "spatial_shape": [32, 32],
                             "channel_def": {str(i): c for i, c in enumerate(classes)}}}}}
    bundle = root / "tiny_bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models").mkdir()
    (bundle / "configs" / "inference.json").write_text(json.dumps(
        {"device": "$torch.device('cpu')", "network_def": net_def, "network": "$@network_def.to(@device)"}))
    (bundle / "configs" / "metadata.json").write_text(json.dumps(meta))
    torch.manual_seed(seed)
    net = UNet(**{k: v for k, v in net_def.items() if k != "_target_"}).eval()
    torch.save(net.state_dict(), bundle / "models" / "model.pt")
    return bundle, net


class SmallNet(nn.Module):
    """A plain 2D conv network to export (in: 1 channel, out: ``classes``)."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def write_torchscript(path: Path, net: nn.Module) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(net.eval(), torch.zeros(1, 1, 32, 32)), str(path))
    return path


def write_onnx(path: Path, net: nn.Module) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), (torch.zeros(1, 1, 32, 32),), str(path), dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    return path


@pytest.fixture(scope="session")
def make():
    """The writers above, for tests: ``make.nnunet(...)``, ``make.bundle(...)``, ``make.torchscript(...)``, ..."""
    from types import SimpleNamespace

    return SimpleNamespace(nnunet=write_nnunet_folder, bundle=write_bundle, torchscript=write_torchscript,
                           onnx=write_onnx, plain_unet=build_plain_unet, checkpoint=nnunet_checkpoint,
                           plans=nnunet_plans, small_net=SmallNet, ct_props=CT_PROPS)
