"""The permutohedral CRF op against the exact dense reference, its gradients, build checks and edge cases.

Tolerances (measured, then given margin):
* Bilateral 5-D features on natural-image crops: the lattice energy is
  0.550-0.567 of the exact energy per image (0.560 over 8 crops) and the
  cosine of W S with the exact W S is 0.9966-0.9988. Held to: ratio within
  4% of LATTICE_TO_EXACT_5D (0.56, the paper's op's ratio), cosine > 0.995.
* Colour 3-D features: ratio 0.71, cosine 0.999. Held to cosine > 0.995.
* The transpose (reverse=True) is the exact adjoint, so <A u, v> = <u, A^T v>
  holds to float32 rounding (1e-5 relative).
"""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from tcam_ray.bench.crf import sample_frames, sample_probs
from tcam_ray.methods.crf_loss import DenseCRFLoss, MultiFrameColourCRFLoss, bilateral_features, colour_features
from tcam_ray.ops import OpBuildError, build_info, exact_dense_crf_energy, exact_gaussian_filter, permutohedral_filter
from tcam_ray.ops import _loader
from tcam_ray.ops import crf
from tcam_ray.ops.crf import (
    CPU_KEY_LIMIT,
    LATTICE_TO_EXACT_5D,
    PAPER_OP_SCALE,
    _elevation_bound,
    _elevation_scales,
    _largest_elevated_coordinate,
    dense_crf_energy,
)

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA device")


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


@pytest.fixture(scope="module")
def natural_64():
    """8 natural 64x64 crops with the paper's sigmas (sigma_xy scaled from 224 to 64 pixels)."""
    images = sample_frames(8, 64, seed=0)
    probs = sample_probs(images).flatten(2).contiguous()
    features = bilateral_features(images, sigma_rgb=15.0, sigma_xy=100.0 * 64 / 224)
    return images, probs, features


def test_build_is_current_and_reports_itself():
    info = build_info()
    assert info["built"] and info["cpu"], info["error"]
    assert not info["stale"], info["stale_reasons"]
    assert info["source_hash"] == info["current_source_hash"]
    assert info["torch_version"] == torch.__version__


def test_paper_normalisation(natural_64):
    """Our energy is the paper's: 0.56x the exact dense energy (issue 5's measurement of the paper's op)."""
    _, probs, features = natural_64
    ours = dense_crf_energy(probs, features)
    exact = exact_dense_crf_energy(probs, features)
    assert PAPER_OP_SCALE == 1.0
    assert float(ours / exact) == pytest.approx(LATTICE_TO_EXACT_5D, rel=0.04)
    # so a weight of 2e-9 weighs the loss like the paper's code did
    loss = DenseCRFLoss(weight=2e-9, sigma_rgb=15.0, sigma_xy=100.0 * 64 / 224)
    images = natural_64[0]
    paper_equivalent = 2e-9 * LATTICE_TO_EXACT_5D * exact
    assert float(loss(images, probs.reshape(8, 2, 64, 64))) == pytest.approx(float(paper_equivalent), rel=0.04)


@pytest.mark.parametrize("size", [48, 64])
def test_bilateral_matches_exact_up_to_constant(size):
    images = sample_frames(2, size, seed=size)
    probs = sample_probs(images, seed=size).flatten(2).contiguous()
    features = bilateral_features(images, 15.0, 100.0 * size / 224)
    ours = permutohedral_filter(probs, features)
    exact = exact_gaussian_filter(probs, features)
    assert cosine(ours, exact) > 0.995
    ratio = float((probs * ours).sum() / (probs * exact).sum())
    assert ratio == pytest.approx(LATTICE_TO_EXACT_5D, rel=0.05)


@pytest.mark.parametrize("size", [48, 64])
def test_colour_features_match_exact(size):
    images = sample_frames(2, size, seed=10 + size)
    probs = sample_probs(images).flatten(2).contiguous()
    features = (images / 15.0).flatten(2)
    ours = permutohedral_filter(probs, features)
    exact = exact_gaussian_filter(probs, features)
    assert cosine(ours, exact) > 0.995
    assert 0.6 < float((probs * ours).sum() / (probs * exact).sum()) < 0.8  # measured 0.71


# Random Gaussian features, 400 points: measured cosines over 3 seeds are
# D<=5: >= 0.9985, D=8: 0.969-0.978, D=16: 0.930-0.953 (the lattice's
# approximation degrades with D, as Adams et al. report).
@pytest.mark.parametrize("dim, min_cosine", [(1, 0.998), (2, 0.998), (3, 0.998), (5, 0.997), (8, 0.95), (16, 0.9)])
def test_random_features_any_dim(dim, min_cosine):
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(1, dim, 400, generator=generator) * 0.8
    values = torch.rand(1, 2, 400, generator=generator)
    ours = permutohedral_filter(values, features)
    assert ours.shape == values.shape
    assert cosine(ours, exact_gaussian_filter(values, features)) > min_cosine


def test_transpose_is_adjoint():
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(2, 5, 500, generator=generator)
    u = torch.randn(2, 3, 500, generator=generator)
    v = torch.randn(2, 3, 500, generator=generator)
    forward = (permutohedral_filter(u, features) * v).sum()
    adjoint = (u * permutohedral_filter(v, features, reverse=True)).sum()
    assert float(forward) == pytest.approx(float(adjoint), rel=1e-5)
    # the forward filter itself is close to symmetric, but not exactly
    assert not torch.equal(permutohedral_filter(v, features), permutohedral_filter(v, features, reverse=True))


@pytest.mark.filterwarnings("ignore:Input #0 requires gradient and is not a double")
def test_op_gradcheck():
    generator = torch.Generator().manual_seed(2)
    features = torch.randn(1, 3, 60, generator=generator)
    values = torch.rand(1, 2, 60, generator=generator, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda v: permutohedral_filter(v, features), (values,), eps=1e-2, atol=1e-3, rtol=1e-3
    )


def test_energy_gradient_matches_reference(natural_64):
    _, probs, features = natural_64
    ours = probs[:2].clone().requires_grad_(True)
    exact = probs[:2].clone().double().requires_grad_(True)
    dense_crf_energy(ours, features[:2]).backward()
    exact_dense_crf_energy(exact, features[:2].double()).backward()
    assert cosine(ours.grad, exact.grad) > 0.995
    assert float(ours.grad.norm() / exact.grad.norm()) == pytest.approx(LATTICE_TO_EXACT_5D, rel=0.06)
    # the paper's gradient: -2 W S / N
    expected = -2.0 * permutohedral_filter(probs[:2], features[:2]) / 2
    torch.testing.assert_close(ours.grad, expected)


def test_opcheck():
    generator = torch.Generator().manual_seed(3)
    values = torch.rand(2, 2, 100, generator=generator, requires_grad=True)
    features = torch.randn(2, 5, 100, generator=generator)
    permutohedral_filter(values, features)  # loads and registers
    torch.library.opcheck(torch.ops.tcam_ray.permutohedral_filter.default, (values, features, False))


def pool(tensor: torch.Tensor) -> torch.Tensor:
    """(N, C, P) -> (1, C, N*P): all items' points as one point set."""
    return tensor.permute(1, 0, 2).reshape(1, tensor.shape[1], -1).contiguous()


def test_threads_give_the_same_result(natural_64):
    _, probs, features = natural_64
    pooled_probs, pooled_features = pool(probs), pool(features)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = permutohedral_filter(probs[:3], features[:3])
        torch.set_num_threads(2)
        two = permutohedral_filter(probs[:3], features[:3])  # N >= threads: per-image threads
        single = permutohedral_filter(probs[:1], features[:1])  # N < threads, small: serial
        # N < threads, 32768 points: the build, splat and slice are split across threads
        pooled = permutohedral_filter(pooled_probs, pooled_features)
        torch.set_num_threads(1)
        pooled_one = permutohedral_filter(pooled_probs, pooled_features)
    finally:
        torch.set_num_threads(before)
    # Bit-identical: a split build numbers the lattice points differently but
    # every sum keeps its order (splat adds each lattice row's points in point order).
    assert torch.equal(one, two)
    assert torch.equal(single, one[:1])
    assert torch.equal(pooled, pooled_one)


@pytest.mark.parametrize("threads", [1, 2])
def test_wide_coordinates_fall_back_exactly(natural_64, threads):
    """A point far from the others makes the lattice too wide for one-word keys: the op rebuilds with wide keys.

    The far point shares no simplex or blur neighbour with the others, so their outputs are unchanged, bit for bit.
    """
    _, probs, features = natural_64
    probs, features = pool(probs), pool(features)  # 32768 points: with 2 threads, a split build
    far = torch.full((1, 5, 1), 2000.0)  # elevated coordinates ~1e4: beyond 12-bit lanes, within the key limit
    features_far = torch.cat([features, far], dim=2)
    probs_far = torch.cat([probs, torch.full((1, 2, 1), 0.5)], dim=2)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        near = permutohedral_filter(probs, features)
        with_far = permutohedral_filter(probs_far, features_far)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(with_far[..., :-1], near)
    # the isolated point keeps only its own (lattice-normalised) weight
    assert 0.3 < float(with_far[0, 0, -1] / 0.5) < 1.0


def test_edge_cases():
    generator = torch.Generator().manual_seed(4)
    # K = 1, N = 1
    features = torch.randn(1, 5, 300, generator=generator)
    values = torch.rand(1, 1, 300, generator=generator)
    assert cosine(permutohedral_filter(values, features), exact_gaussian_filter(values, features)) > 0.97
    # constant image: every point in one place, so every output is the same fraction of the total
    constant = torch.zeros(1, 5, 200)
    out = permutohedral_filter(values[:, :, :200], constant)
    torch.testing.assert_close(out, out[..., :1].expand_as(out))
    assert 0.4 < float(out[0, 0, 0] / values[0, 0, :200].sum()) <= 1.0
    # a 1 x P image
    row = sample_frames(1, 64)[:, :, :1, :]
    row_features = bilateral_features(row, 15.0, 30.0)
    row_probs = sample_probs(sample_frames(1, 64))[:, :, :1, :].flatten(2).contiguous()
    assert cosine(permutohedral_filter(row_probs, row_features), exact_gaussian_filter(row_probs, row_features)) > 0.99
    # empty inputs
    assert permutohedral_filter(torch.zeros(2, 0, 10), torch.zeros(2, 3, 10)).shape == (2, 0, 10)
    assert permutohedral_filter(torch.zeros(2, 1, 0), torch.zeros(2, 3, 0)).shape == (2, 1, 0)


def test_non_contiguous_inputs():
    generator = torch.Generator().manual_seed(5)
    values = torch.rand(300, 2, 3, generator=generator).permute(2, 1, 0)  # (3, 2, 300) view
    features = torch.randn(300, 3, 5, generator=generator).permute(1, 2, 0)  # (3, 5, 300) view
    assert not values.is_contiguous() and not features.is_contiguous()
    torch.testing.assert_close(
        permutohedral_filter(values, features), permutohedral_filter(values.contiguous(), features.contiguous())
    )


@pytest.mark.parametrize(
    "values, features, message",
    [
        (torch.rand(2, 100), torch.rand(2, 5, 100), r"`values` must have shape \(N, K, P\)"),
        (torch.rand(2, 1, 100), torch.rand(2, 100), r"`features` must have shape \(N, D, P\)"),
        (torch.rand(2, 1, 100), torch.rand(3, 5, 100), r"`features` must have shape \(N, D, P\) = \(2, D, 100\)"),
        (torch.rand(2, 1, 100), torch.rand(2, 5, 99), r"`features` must have shape \(N, D, P\) = \(2, D, 100\)"),
        (torch.rand(2, 1, 100), torch.rand(2, 17, 100), r"`features` dimension D .* must be in \[1, 16\]"),
        (torch.rand(2, 1, 100).double(), torch.rand(2, 5, 100), r"`values` must be float32"),
        (torch.rand(2, 1, 100), torch.rand(2, 5, 100).half(), r"`features` must be float32"),
        (torch.rand(1, 1, 10), torch.full((1, 5, 10), 1e5), r"`features` has values too large for the lattice"),
        (torch.rand(1, 1, 10), torch.full((1, 5, 10), float("nan")), r"`features` has non-finite values"),
        (torch.rand(1, 1, 10), torch.full((1, 5, 10), -float("inf")), r"`features` has non-finite values"),
    ],
)
def test_bad_inputs_name_the_argument(values, features, message):
    with pytest.raises(RuntimeError, match=message):
        permutohedral_filter(values, features)


def features_at_the_key_limit(dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inside, outside): 40 ordinary points and one whose largest elevated coordinate is the last float32
    below CPU_KEY_LIMIT (inside) or the next float32 up (outside); its only non-zero feature is the last one."""

    def with_edge(value: torch.Tensor) -> torch.Tensor:
        features = torch.randn(1, dim, 41, generator=torch.Generator().manual_seed(dim))
        features[0, :, -1] = 0.0
        features[0, -1, -1] = value
        return features

    def inside(value: torch.Tensor) -> bool:
        return _largest_elevated_coordinate(with_edge(value)) < CPU_KEY_LIMIT

    value = torch.tensor(CPU_KEY_LIMIT / (dim * _elevation_scales(dim)[-1]), dtype=torch.float32)
    up, down = torch.tensor(float("inf")), torch.tensor(0.0)
    while not inside(value):
        value = torch.nextafter(value, down)
    while inside(torch.nextafter(value, up)):
        value = torch.nextafter(value, up)
    return with_edge(value), with_edge(torch.nextafter(value, up))


@pytest.mark.parametrize("dim", [1, 5, 16])
def test_features_too_large_for_the_lattice_are_a_python_error(dim):
    """Checked in Python before the op (a C++ exception aborts the process on some toolchains), exactly:
    the next float32 down still runs, and the process goes on."""
    inside, outside = features_at_the_key_limit(dim)
    values = torch.rand(1, 2, inside.shape[2], generator=torch.Generator().manual_seed(0))
    message = (
        r"^permutohedral_filter: `features` has values too large for the lattice \(elevated lattice coordinates "
        r"up to 30000, the limit is \+-30000\); divide the features by their standard deviations \(sigma\) "
        r"before filtering$"
    )
    with pytest.raises(RuntimeError, match=message):
        permutohedral_filter(values, outside)
    assert torch.isfinite(permutohedral_filter(values, inside)).all()  # just inside: the op runs


def test_the_compiled_op_draws_the_line_at_the_same_float(tmp_path):
    """The compiled op (run apart: where its exception aborts, only that process dies) refuses the
    first float32 that the Python check refuses and takes the last one it takes."""
    inside, outside = features_at_the_key_limit(5)
    values = torch.rand(1, 2, inside.shape[2])
    permutohedral_filter(values[..., :1], inside[..., :1])  # loads the op
    assert torch.isfinite(torch.ops.tcam_ray.permutohedral_filter(values, inside)).all()
    torch.save((values, outside), tmp_path / "outside.pt")
    script = (
        "import sys, torch; from tcam_ray.ops import permutohedral_filter; "
        "values, features = torch.load(sys.argv[1]); "
        "permutohedral_filter(values[..., :1], features[..., :1]); "
        "torch.ops.tcam_ray.permutohedral_filter(values, features)"
    )
    command = [sys.executable, "-c", script, str(tmp_path / "outside.pt")]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode != 0 and "values too large for the lattice" in result.stderr, result.stderr[-2000:]


def test_lattice_check_is_exact_where_the_quick_bound_is_not():
    """Per-dimension maxima on different points: the quick bound adds them past the limit, but every
    elevated coordinate is 20000 and the op runs."""
    scales = _elevation_scales(2)
    features = torch.zeros(1, 2, 3)
    features[0, 0, 0] = 20000.0 / scales[0]  # elevated (20000, -20000, 0)
    features[0, 1, 1] = 10000.0 / scales[1]  # elevated (10000, 10000, -20000)
    largest = features.abs().amax(dim=(0, 2)).tolist()
    assert _elevation_bound(largest) >= CPU_KEY_LIMIT > _largest_elevated_coordinate(features)
    assert torch.isfinite(permutohedral_filter(torch.rand(1, 1, 3), features)).all()


def test_sensible_features_pass_on_the_quick_bound(natural_64, monkeypatch):
    """The exact elevation (a pass per dimension) never runs for sigma-scaled features."""
    _, probs, features = natural_64

    def exact_elevation(_):
        raise AssertionError("the exact elevation ran")

    monkeypatch.setattr(crf, "_largest_elevated_coordinate", exact_elevation)
    permutohedral_filter(probs, features * 100.0)  # even 100x the paper's features


def test_python_checks_agree_with_the_compiled_op():
    from tcam_ray.ops.crf import MAX_FEATURE_DIM

    assert build_info()["max_feature_dim"] == MAX_FEATURE_DIM


def test_loss_shape_errors():
    with pytest.raises(ValueError, match=r"images must have shape \(N, 3, H, W\)"):
        DenseCRFLoss()(torch.rand(2, 4, 8, 8), torch.rand(2, 2, 8, 8))
    with pytest.raises(ValueError, match=r"probs must have shape \(N, K, H, W\)"):
        DenseCRFLoss()(torch.rand(2, 3, 8, 8), torch.rand(2, 2, 8, 9))
    with pytest.raises(ValueError, match=r"images must have shape \(N, T, 3, H, W\)"):
        MultiFrameColourCRFLoss(1.0)(torch.rand(2, 3, 8, 8), torch.rand(2, 2, 8, 8))


def test_stale_build_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(_loader, "current_source_hash", lambda: "0000000000000000")
    _loader.load_extension.cache_clear()
    try:
        with pytest.raises(OpBuildError, match=r"stale.*Rebuild it with: pip install --no-build-isolation -e \."):
            _loader.load_extension()
        assert build_info()["stale"]
    finally:
        _loader.load_extension.cache_clear()


def test_arch_coverage_rules():
    assert _loader.arch_covers("8.0;9.0+PTX", (8, 6))  # same-major SASS
    assert _loader.arch_covers("8.0;9.0+PTX", (12, 0))  # PTX JIT
    assert not _loader.arch_covers("8.0;9.0+PTX", (7, 5))
    assert not _loader.arch_covers("9.0", (10, 0))


def test_scaled_loss_follows_the_paper(natural_64):
    """scale: images nearest, probs bilinear, sigma_xy times scale (the paper's DenseCRFLoss)."""
    images, probs, _ = natural_64
    probs = probs.reshape(8, 2, 64, 64)
    loss = DenseCRFLoss(weight=1.0, sigma_rgb=15.0, sigma_xy=30.0, scale=0.5)(images, probs)
    small_images = F.interpolate(images, scale_factor=0.5, mode="nearest")
    small_probs = F.interpolate(probs, scale_factor=0.5, mode="bilinear", align_corners=False)
    manual = dense_crf_energy(small_probs.flatten(2), bilateral_features(small_images, 15.0, 15.0))
    torch.testing.assert_close(loss, manual)


def test_loss_runs_in_float32_under_autocast(natural_64):
    images, probs, _ = natural_64
    half_probs = probs.reshape(8, 2, 64, 64)[:2].to(torch.bfloat16).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = DenseCRFLoss(weight=1.0, sigma_xy=30.0)(images[:2].to(torch.uint8), half_probs)
    assert loss.dtype == torch.float32
    loss.backward()
    assert half_probs.grad.dtype == torch.bfloat16 and torch.isfinite(half_probs.grad.float()).all()


def test_colour_crf_pools_the_frames_of_a_clip():
    frames = sample_frames(6, 32, seed=7).reshape(2, 3, 3, 32, 32)
    probs = sample_probs(frames.flatten(0, 1)).reshape(2, 3, 2, 32, 32)
    loss = MultiFrameColourCRFLoss(weight=1.0, sigma_rgb=15.0)(frames, probs)
    clip_probs = probs.permute(0, 2, 1, 3, 4).flatten(2)
    exact = exact_dense_crf_energy(clip_probs, colour_features(frames, 15.0))
    assert 0.6 < float(loss / exact) < 0.8  # the 3-D lattice's ratio (0.71 measured)
    per_frame = MultiFrameColourCRFLoss(weight=1.0)(frames.reshape(6, 1, 3, 32, 32), probs.reshape(6, 1, 2, 32, 32))
    # pooled: the cross-frame affinities add negative energy (compare totals: each loss divides by its clip count)
    assert float(loss) * 2 < float(per_frame) * 6 * 1.05


def test_adaptive_colour_crf_weighs_every_clip_alike():
    """CoLo-CAM's adaptive weight: lambda * mean over clips of E_c / |E_c| with |E_c| held constant, so the
    value is -lambda and each clip's gradient is lambda * dE_c / |E_c| / N, whatever its energy's size."""
    frames = sample_frames(4, 24, seed=3).reshape(2, 2, 3, 24, 24)
    probs = sample_probs(frames.flatten(0, 1)).reshape(2, 2, 2, 24, 24)
    frames[1] = frames[1] * 0.2  # a low-contrast clip: a far smaller energy
    leaf = probs.clone().requires_grad_(True)
    loss = MultiFrameColourCRFLoss(weight=9.0, adaptive=True)(frames, leaf)
    assert float(loss) == pytest.approx(-9.0)
    loss.backward()
    for clip in range(2):
        one = probs[clip : clip + 1].clone().requires_grad_(True)
        energy = MultiFrameColourCRFLoss(weight=1.0)(frames[clip : clip + 1], one)
        energy.backward()
        torch.testing.assert_close(leaf.grad[clip], 9.0 * one.grad[0] / abs(float(energy)) / 2, rtol=1e-5, atol=1e-9)


@needs_cuda
def test_cuda_matches_cpu(natural_64):
    _, probs, features = natural_64
    cpu = permutohedral_filter(probs, features)
    gpu = permutohedral_filter(probs.cuda(), features.cuda())
    assert gpu.device.type == "cuda"
    assert cosine(gpu.cpu(), cpu) > 0.9999
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-3, atol=1e-3)
    u = torch.randn_like(probs).cuda()
    forward = (permutohedral_filter(u, features.cuda()) * probs.cuda()).sum()
    adjoint = (u * permutohedral_filter(probs.cuda(), features.cuda(), reverse=True)).sum()
    assert float(forward) == pytest.approx(float(adjoint), rel=1e-4)


@needs_cuda
def test_cuda_loss_and_gradient(natural_64):
    images, probs, _ = natural_64
    probs = probs.reshape(8, 2, 64, 64)
    loss = DenseCRFLoss(weight=1.0, sigma_xy=30.0)
    leaf_cpu = probs.clone().requires_grad_(True)
    leaf_gpu = probs.cuda().requires_grad_(True)
    loss(images, leaf_cpu).backward()
    value = loss(images.cuda(), leaf_gpu)
    value.backward()
    assert value.device.type == "cuda"
    assert cosine(leaf_gpu.grad.cpu(), leaf_cpu.grad) > 0.9999


@needs_cuda
def test_cuda_places_points_out_of_range_at_the_origin():
    """CUDA cannot raise without a sync: a non-finite or too-large point goes to the origin, with no
    out-of-bounds write (a partly out-of-range point used to index past locate_simplex's arrays)."""
    generator = torch.Generator().manual_seed(6)
    good = torch.randn(1, 5, 200, generator=generator) + 50.0  # far from the origin's simplices
    bad = torch.tensor([[float("nan"), 10, 20, 30, 40], [3.5e8, 4.5e8, 0, 0, 0], [0, 0, 0, 0, 1e4]]).T[None]
    features = torch.cat([good, bad], dim=2)
    values = torch.rand(1, 2, 203, generator=generator)
    with pytest.raises(RuntimeError, match="non-finite"):
        permutohedral_filter(values, features)  # the CPU refuses them
    out = permutohedral_filter(values.cuda(), features.cuda()).cpu()  # a bad write would fail here
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[..., 200:], out[..., 200:201].expand(-1, -1, 3))  # one place
    torch.testing.assert_close(out[..., :200], permutohedral_filter(values[..., :200].cuda(), good.cuda()).cpu())


def test_cli_doctor_and_bench_kinds(cli):
    result = cli("doctor")
    assert result.returncode == 0 and "CPU kernels:         yes" in result.stdout
    result = cli("bench", "nope")
    assert result.returncode == 2 and "known kinds: crf, data, train, scale, store, seeds, track" in result.stderr
