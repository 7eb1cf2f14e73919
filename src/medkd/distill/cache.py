"""Teacher-output cache: the frozen teacher's tapped maps computed once, then read instead of recomputed.

The cache holds, for every distinct training input, each tap the distillation terms need from the
teacher (``logits`` and features), in half precision, in safetensors shards on disk. It is valid when
the training inputs are deterministic (2D slices; 3D "patches" that are whole resized volumes) and
their augmentation can be applied to the cached maps exactly: flips and 90-degree rotations are applied
to the cached maps with the sample's ops (:func:`medkd.data.augment.apply_ops`). Intensity jitter or random
3D crops would need the teacher to see the augmented input, so the cache refuses them.

Note what "exactly" means: with flips / rotations on, the cached target is ``aug(teacher(x))``, while live
distillation uses ``teacher(aug(x))``; the two are equal only for an equivariant teacher. With
augmentation off they are the same up to half precision (tested).

Example:
    >>> cache = TeacherCache.build(run / "teacher_cache", teacher, source, positions, ["logits", "bottleneck"])
    >>> feats = cache.get(source.cache_keys(indices))      # dict of float32 tensors
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from medkd.config import AugmentConfig
from medkd.errors import ConfigError
from medkd.models import FeatureTapper

__all__ = ["HOLD_LIMIT_BYTES", "TeacherCache", "check_cacheable", "fingerprint"]

#: Largest cache :meth:`TeacherCache.hold` keeps in memory (float16 bytes).
HOLD_LIMIT_BYTES = 4 * 2**30


def check_cacheable(augment: AugmentConfig, deterministic: bool) -> None:
    """Raise ConfigError when a cache could not reproduce what the teacher would see."""
    if augment.intensity > 0:
        raise ConfigError("distill.cache: data.augment.intensity changes what the teacher sees; "
                          "set it to 0 or use live distillation (distill.cache: false)")
    if not deterministic:
        raise ConfigError("distill.cache: 3D random patches are not deterministic inputs; set data.volume_size "
                          "equal to data.size (whole volumes) or use live distillation (distill.cache: false)")


def fingerprint(teacher: torch.nn.Module, inputs: torch.Tensor, taps: Sequence[str]) -> str:
    """Hash of the teacher's weights, the cached inputs and the taps (a stale cache is never reused).

    ``inputs`` are what the teacher reads (its own normalised copy of its channels when it has one), so a cache
    built on other intensities -- another ``data.normalize``, another teacher normalisation -- never matches.

    A teacher whose weights live outside its state dict (an ONNX file run by onnxruntime) carries a
    ``source_digest`` (the file's hash), which is hashed too.
    """
    h = hashlib.sha256()
    h.update(str(getattr(teacher, "source_digest", "")).encode())
    for name, tensor in sorted(teacher.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    h.update(inputs.contiguous().numpy().tobytes())
    h.update(json.dumps(sorted(taps)).encode())
    return h.hexdigest()


class TeacherCache:
    """Read access to a built cache folder (``index.json`` + ``shard_XXXX.safetensors``)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.index = json.loads((self.folder / "index.json").read_text())
        self.shard_size: int = self.index["shard_size"]
        self.taps: list[str] = self.index["taps"]
        self._handles = [safe_open(str(self.folder / name), framework="pt") for name in self.index["shards"]]
        self._held: dict[str, torch.Tensor] | None = None

    @property
    def size_bytes(self) -> int:
        return int(self.index["bytes"])

    def get(self, keys: torch.Tensor) -> dict[str, torch.Tensor]:
        """The cached maps of the given inputs, stacked in order, as float32 (on the held device, if held)."""
        if self._held is not None:
            return {t: v.index_select(0, keys.to(v.device)).float() for t, v in self._held.items()}
        out: dict[str, list[torch.Tensor]] = {t: [] for t in self.taps}
        for k in keys.tolist():
            shard, row = divmod(int(k), self.shard_size)
            handle = self._handles[shard]
            for tap in self.taps:
                out[tap].append(handle.get_slice(tap)[row:row + 1])
        return {t: torch.cat(v).float() for t, v in out.items()}

    def hold(self, device: torch.device | str = "cpu", max_bytes: int = HOLD_LIMIT_BYTES) -> bool:
        """Keep the whole cache in memory on ``device`` (float16) when it is at most ``max_bytes``.

        Reads then cost one ``index_select`` instead of a file read per input and tap (and, on a GPU, no
        host-to-device copy). Returns whether the cache is now held.
        """
        if self.size_bytes > max_bytes:
            return False
        self._held = {tap: torch.cat([h.get_tensor(tap) for h in self._handles]).to(device) for tap in self.taps}
        return True

    @classmethod
    def build(cls, folder: Path, teacher: torch.nn.Module, inputs: torch.Tensor, taps: Sequence[str],
              batch_size: int = 16, device: torch.device | str = "cpu", shard_size: int = 256,
              log: Callable[[str], Any] = print) -> TeacherCache:
        """Run the teacher once over ``inputs`` (N, C, *spatial) and write its taps, or reuse a matching cache.

        Args:
            folder: cache folder (created; replaced when its fingerprint does not match).
            teacher: the frozen teacher.
            inputs: every distinct training input, in key order, channels as the teacher reads them (its own
                normalised copy when it has one).
            taps: teacher taps to keep (``logits`` and feature taps).
            batch_size: teacher forward batch size.
            device: where the teacher runs.
            shard_size: inputs per shard file.
            log: where the size announcement goes.
        """
        folder = Path(folder)
        taps = sorted(set(taps))
        key = fingerprint(teacher, inputs, taps)
        index_file = folder / "index.json"
        if index_file.is_file() and json.loads(index_file.read_text()).get("fingerprint") == key:
            cache = cls(folder)
            log(f"teacher cache: reusing {folder} ({cache.size_bytes / 2**20:.1f} MiB)")
            return cache
        teacher.eval()
        with torch.no_grad(), FeatureTapper(teacher, taps) as tapper:
            teacher(inputs[:1].to(device))
            shapes = {t: list(v.shape[1:]) for t, v in tapper.features.items()}
        per_input = sum(2 * int(torch.tensor(s).prod()) for s in shapes.values())
        total = per_input * inputs.shape[0]
        n_shards = (inputs.shape[0] + shard_size - 1) // shard_size
        log(f"teacher cache: {inputs.shape[0]} inputs x {len(taps)} taps = {total / 2**20:.1f} MiB (float16) "
            f"in {n_shards} shard(s) -> {folder}")
        tmp = folder.with_name(folder.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        shards = [f"shard_{s:04d}.safetensors" for s in range(n_shards)]
        for s, name in enumerate(shards):
            block = inputs[s * shard_size:(s + 1) * shard_size]
            save_file(_teacher_taps(teacher, block, taps, batch_size, device), str(tmp / name))
        (tmp / "index.json").write_text(json.dumps({
            "fingerprint": key, "taps": taps, "shapes": shapes, "n": int(inputs.shape[0]),
            "shard_size": shard_size, "shards": shards, "bytes": total, "dtype": "float16",
        }, indent=2))
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
        return cls(folder)


def _teacher_taps(teacher: torch.nn.Module, inputs: torch.Tensor, taps: Sequence[str], batch_size: int,
                  device: torch.device | str) -> dict[str, torch.Tensor]:
    """The teacher's ``taps`` over ``inputs``, run ``batch_size`` at a time, as contiguous float16 CPU tensors."""
    parts: dict[str, list[torch.Tensor]] = {t: [] for t in taps}
    with torch.no_grad(), FeatureTapper(teacher, taps) as tapper:
        for start in range(0, inputs.shape[0], batch_size):
            teacher(inputs[start:start + batch_size].to(device))
            for t in taps:
                parts[t].append(tapper.features[t].detach().to("cpu", torch.float16))
            tapper.clear()
    return {t: torch.cat(v).contiguous() for t, v in parts.items()}
