from __future__ import annotations

import math

import numpy as np
import pytest

from medkd.data.sites import SiteProfile, apply_site, axis_scales, make_site_profiles, random_bias_field
from medkd.errors import ConfigError


def _ramp(shape):
    grids = np.meshgrid(*[np.linspace(0.0, 1.0, n) for n in shape], indexing="ij")
    return np.mean(grids, axis=0)


def test_profile_validation_and_dict_round_trip():
    p = SiteProfile("a", bias_strength=0.2, gamma=1.3, noise_std=0.02, noise_type="gaussian", resolution=1.5)
    d = p.to_dict()
    assert d["name"] == "a" and d["noise_type"] == "gaussian" and d["resolution"] == 1.5
    assert SiteProfile.from_dict(d) == p
    with pytest.raises(ConfigError, match="noise_type"):
        SiteProfile("a", noise_type="poisson")
    with pytest.raises(ConfigError, match="resolution"):
        SiteProfile("a", resolution=0.5)
    with pytest.raises(ConfigError, match="gamma"):
        SiteProfile("a", gamma=0.0)
    with pytest.raises(ConfigError, match="unknown key"):
        SiteProfile.from_dict({"name": "a", "gama": 1.0})


def test_make_site_profiles_deterministic_and_distinct():
    a, b = make_site_profiles(4, seed=3), make_site_profiles(4, seed=3)
    assert a == b
    assert make_site_profiles(4, seed=4) != a
    assert [p.name for p in a] == ["site1", "site2", "site3", "site4"]
    # every pair of sites differs in every parameter by a good part of the 1/k spacing of its range
    log_gamma = np.log([p.gamma for p in a])
    noise = np.log([p.noise_std for p in a])
    resolution = np.array([p.resolution for p in a])
    for values, span in [(log_gamma, math.log(1.6 / 0.65)), (noise, math.log(0.055 / 0.012)), (resolution, 1.0)]:
        gaps = np.abs(values[:, None] - values[None, :])[np.triu_indices(4, 1)]
        assert gaps.min() > 0.6 * span / 4
    assert len(make_site_profiles(1)) == 1
    with pytest.raises(ConfigError):
        make_site_profiles(0)


def test_identity_profile_is_identity():
    image = _ramp((20, 24)) * 300.0 - 50.0
    out = apply_site(image, SiteProfile("id"), np.random.default_rng(0))
    assert out.dtype == np.float32 and out.shape == image.shape
    np.testing.assert_allclose(out, image, atol=1e-3)


def test_gamma_contrast_offset_golden():
    image = np.full((8, 8), 0.25)
    profile = SiteProfile("g", gamma=2.0, contrast=2.0, offset=0.1)
    out = apply_site(image, profile, np.random.default_rng(0), value_range=(0.0, 1.0))
    np.testing.assert_allclose(out, 2.0 * 0.0625 + 0.1, rtol=1e-6)
    # value_range maps units back: same result in [0, 200] units is 200x larger
    out200 = apply_site(image * 200.0, profile, np.random.default_rng(0), value_range=(0.0, 200.0))
    np.testing.assert_allclose(out200, out * 200.0, rtol=1e-5)


def test_noise_levels():
    rng = np.random.default_rng(0)
    flat = np.full((200, 200), 0.5)
    gauss = apply_site(flat, SiteProfile("n", noise_std=0.05, noise_type="gaussian"), rng, value_range=(0, 1))
    assert abs(gauss.std() - 0.05) < 0.002 and abs(gauss.mean() - 0.5) < 0.002
    # Rician noise on an empty background is Rayleigh: mean sigma * sqrt(pi / 2)
    zero = np.zeros((200, 200))
    rice = apply_site(zero, SiteProfile("n", noise_std=0.05), rng, value_range=(0, 1))
    assert abs(rice.mean() - 0.05 * math.sqrt(math.pi / 2)) < 0.001
    # ... with E[R^2] = 2 sigma^2 and median sigma * sqrt(2 ln 2); Gaussian noise would give E = 0, E[x^2] = sigma^2
    assert abs((rice**2).mean() - 2 * 0.05**2) < 2e-4
    assert abs(np.median(rice) - 0.05 * math.sqrt(2 * math.log(2))) < 0.001
    gauss0 = apply_site(zero, SiteProfile("n", noise_std=0.05, noise_type="gaussian"), rng, value_range=(0, 1))
    assert abs((gauss0 < 0).mean() - 0.5) < 0.02 and abs((gauss0**2).mean() - 0.05**2) < 2e-4


def test_bias_field_statistics():
    profile = SiteProfile("b", bias_strength=0.3, bias_smoothness=0.5)
    field = random_bias_field((64, 48), profile, np.random.default_rng(0))
    log = np.log(field)
    assert abs(log.mean()) < 1e-9 and abs(log.std() - 0.3) < 1e-9
    # smooth: neighbouring pixels differ far less than the field varies overall
    assert np.abs(np.diff(log, axis=0)).max() < 0.1 * (log.max() - log.min())
    other = random_bias_field((64, 48), profile, np.random.default_rng(1))
    assert not np.allclose(field, other)


def test_resolution_and_blur_remove_detail():
    checker = (np.indices((64, 64)).sum(0) % 2).astype(float)
    for profile in (SiteProfile("r", resolution=2.0), SiteProfile("s", blur_sigma=1.0)):
        out = apply_site(checker, profile, np.random.default_rng(0), value_range=(0, 1))
        assert out.std() < 0.1 * checker.std()
        assert abs(out.mean() - 0.5) < 0.02


@pytest.mark.parametrize("shape", [(32, 40), (24, 20, 16)])
def test_any_image_deterministic(shape):
    image = _ramp(shape) * 1000.0
    profile = make_site_profiles(3, seed=0)[1]
    a = apply_site(image, profile, np.random.default_rng(5))
    b = apply_site(image, profile, np.random.default_rng(5))
    c = apply_site(image, profile, np.random.default_rng(6))
    assert a.shape == shape and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_singleton_axis_is_left_alone():
    image = _ramp((32, 40))
    profile = SiteProfile("s", bias_strength=0.2, blur_sigma=1.5, resolution=1.7, noise_std=0.03, gamma=1.4)
    flat = apply_site(image, profile, np.random.default_rng(2))
    slab = apply_site(image[..., None], profile, np.random.default_rng(2))
    assert slab.shape == (32, 40, 1)
    np.testing.assert_allclose(slab[..., 0], flat, atol=1e-6)


def test_shared_bias_shape_checked():
    with pytest.raises(ConfigError, match="bias field shape"):
        apply_site(np.zeros((8, 8)), SiteProfile("x"), np.random.default_rng(0), bias=np.ones((4, 4)))


STACK_EFFECTS = SiteProfile("stack", bias_strength=0.0, blur_sigma=1.0, resolution=1.8, noise_std=0.0)


def _slice_leak(**kwargs) -> float:
    """How much output slice 2 of a (32, 32, 5) stack moves when only input slice 3 changes."""
    stack = np.stack([_ramp((32, 32)) * (1 + z) for z in range(5)], axis=-1)
    changed = stack.copy()
    changed[..., 3] = 0.0
    a = apply_site(stack, STACK_EFFECTS, np.random.default_rng(0), value_range=(0, 5), **kwargs)
    b = apply_site(changed, STACK_EFFECTS, np.random.default_rng(0), value_range=(0, 5), **kwargs)
    return float(np.abs(a[..., 2] - b[..., 2]).max())


def test_isotropic_volume_is_degraded_along_every_axis():
    assert _slice_leak() > 0.1  # no spacing, not in-plane: the third axis is blurred / resampled like the others


def test_in_plane_never_mixes_slices_and_matches_each_slice_alone():
    assert _slice_leak(in_plane=True) == 0.0
    stack = np.stack([_ramp((32, 32)) * (1 + z) for z in range(3)], axis=-1)
    out = apply_site(stack, STACK_EFFECTS, np.random.default_rng(0), value_range=(0, 3), in_plane=True)
    alone = apply_site(stack[..., 1], STACK_EFFECTS, np.random.default_rng(0), value_range=(0, 3))
    np.testing.assert_allclose(out[..., 1], alone, atol=1e-5)


def test_a_coarse_slice_spacing_keeps_the_slices_apart():
    # 1.5 mm in-plane, 10 mm between slices: the site's 1.8 x 1.5 = 2.7 mm voxel is finer than the slice gap
    assert _slice_leak(spacing=(1.5, 1.5, 10.0)) < 1e-6
    assert _slice_leak(spacing=(1.0, 1.0, 1.0)) > 0.1


def test_axis_scales():
    assert axis_scales((8, 8, 4), None) == [1.0, 1.0, 1.0]
    assert axis_scales((8, 8, 4), None, in_plane=True) == [1.0, 1.0, 0.0]
    assert axis_scales((8, 8, 1), (1.0, 1.0, 5.0)) == [1.0, 1.0, 0.0]
    assert axis_scales((8, 8, 4), (0.5, 1.0, 2.0)) == [1.0, 0.5, 0.25]
    with pytest.raises(ConfigError, match="spacing"):
        axis_scales((8, 8, 4), (1.0, 1.0))
    with pytest.raises(ConfigError, match="spacing"):
        axis_scales((8, 8, 4), (1.0, 0.0, 1.0))
