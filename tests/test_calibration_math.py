"""Numeric core of calibration: collectors and amax methods, checked against NumPy references."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from qdq_toolkit.calibration import (
    AMAX_FLOOR,
    CALIBRATION_METHODS,
    HistogramCollector,
    MaxCollector,
    entropy_amax,
    kl_divergences,
    make_collector,
    mse_amax,
    mse_errors,
    percentile_amax,
)

HISTOGRAM_METHODS = ("percentile", "entropy", "mse")


def _fed(method: str, *batches: np.ndarray, **kwargs) -> MaxCollector | HistogramCollector:
    collector = make_collector(method, **kwargs)
    for batch in batches:
        collector.update(batch)
    return collector


def _bin_width(collector: HistogramCollector) -> float:
    return collector.range / collector.num_bins


def _empirical_qdq_mse(x: np.ndarray, amax: float) -> float:
    """Mean squared error of symmetric narrow-range int8 QDQ, computed on the samples themselves."""
    scale = amax / 127.0
    return float(np.mean((np.clip(np.rint(x / scale), -127, 127) * scale - x) ** 2))


def _nvidia_kl(counts: np.ndarray, stop: int, num_quant_bins: int = 128) -> float:
    """KL divergence of one threshold, step by step as NVIDIA pytorch-quantization's _compute_amax_entropy."""
    bins = np.array(counts, dtype=np.float64)
    bins[0] = bins[1]
    space = np.linspace(0, stop, num=num_quant_bins + 1)
    digitized = np.digitize(range(stop), space) - 1
    digitized[bins[:stop] == 0] = -1
    group = np.zeros(num_quant_bins)
    for index, q in enumerate(digitized):
        if q != -1:
            group[q] += bins[index]
    for q, size in Counter(digitized.tolist()).items():
        if q != -1:
            group[q] /= size
    candidate = np.array([group[q] if q != -1 else 0.0 for q in digitized])
    reference = bins[:stop].copy()
    reference[-1] += bins[stop:].sum()
    if candidate.sum() == 0:
        return np.inf
    p, q = reference / reference.sum(), candidate / candidate.sum()
    if np.any((p > 0) & (q == 0)):
        return np.inf  # scipy.stats.entropy's answer
    mask = p > 0
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


# ---- max --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["max", "entropy"])
def test_max_equals_numpy_abs_max_over_many_batches(method):
    rng = np.random.default_rng(1)
    batches = [rng.normal(0, 1 + k, size=(8, 16, 16, 3)).astype(np.float32) for k in range(40)]
    batches[17][2, 3, 4, 1] = -1234.5  # the extreme value is negative and in the middle of the stream
    collector = _fed(method, *batches)
    assert collector.compute_amax("max") == float(np.abs(np.concatenate([b.ravel() for b in batches])).max())
    assert collector.max_abs == 1234.5
    assert collector.num_values == sum(b.size for b in batches)


def test_max_collector_computes_only_max():
    collector = _fed("max", np.array([1.0, -2.0]))
    assert isinstance(collector, MaxCollector)
    with pytest.raises(ValueError, match=r"needs a histogram.*make_collector\('entropy'\)"):
        collector.compute_amax("entropy")


# ---- streaming histogram -----------------------------------------------------------------------------------


def test_streaming_equals_one_shot_with_range_doubling():
    rng = np.random.default_rng(2)
    # the scale grows ~190x over 50 batches: the range doubles 7 times; a quarter of the values are ReLU zeros
    batches = [
        np.maximum(rng.normal(0, 0.3 * 1.11**k, size=4096), 0).astype(np.float32) - rng.laplace(0, 0.01, 4096)
        for k in range(50)
    ]
    streamed = make_collector("entropy")
    assert streamed.histogram() is None
    ranges = []
    for batch in batches:
        streamed.update(batch)
        counts, _ = streamed.histogram()
        assert counts.shape == (2048,)  # memory stays flat
        ranges.append(streamed.range)
    assert ranges[-1] / ranges[0] >= 2**6

    data = np.concatenate(batches)
    one_shot = _fed("entropy", data)
    reversed_order = _fed("entropy", *batches[::-1])  # a different first batch initialises the range
    counts, edges = streamed.histogram()
    assert counts.sum() == data.size == streamed.num_values
    assert streamed.range == one_shot.range
    # every count sits in the bin a single np.histogram over the final range puts it in
    np.testing.assert_array_equal(counts, np.histogram(np.abs(data), bins=edges)[0])
    np.testing.assert_array_equal(counts, one_shot.histogram()[0])
    np.testing.assert_array_equal(counts, reversed_order.histogram()[0])
    for method in CALIBRATION_METHODS:
        amax = streamed.compute_amax(method)
        assert abs(amax - one_shot.compute_amax(method)) <= _bin_width(streamed)
        assert amax == reversed_order.compute_amax(method)


def test_zeros_before_the_first_nonzero_value_are_counted():
    collector = make_collector("percentile")
    collector.update(np.zeros((4, 100), dtype=np.float32))
    collector.update(np.array([0.0, -0.0, 0.5, -1.5], dtype=np.float32))
    counts, edges = collector.histogram()
    assert collector.range == 2.0 and edges[-1] == 2.0
    assert counts.sum() == 404 and counts[0] == 402
    collector.update(np.zeros(96))
    assert collector.histogram()[0][0] == 498
    # 498 of 500 values are zeros: up to 99.6 % the percentile is reached in bin 0, whose right edge it returns
    assert collector.compute_amax("percentile", percentile=99.6) == edges[1] > 0
    assert collector.compute_amax("percentile", percentile=99.7) == 0.5 + edges[1]


def test_huge_jump_in_range_keeps_every_count():
    collector = make_collector("mse")
    collector.update(np.linspace(-1e-3, 1e-3, 1001))
    collector.update(np.array([3e4, -100.0]))  # the range grows by 2**24: all old counts fold into bin 0
    counts, edges = collector.histogram()
    assert collector.range == 2.0**15 and edges[1] == 16.0
    assert counts.sum() == 1003 and counts[0] == 1001 and counts[6] == counts[1875] == 1


# ---- percentile --------------------------------------------------------------------------------------------


def test_percentile_of_uniform_distribution():
    rng = np.random.default_rng(3)
    a = 3.0
    x = rng.uniform(-a, a, size=1_000_000).astype(np.float32)
    collector = _fed("percentile", *np.split(x, 10))
    width = _bin_width(collector)
    amax = collector.compute_amax(percentile=99.0)
    assert abs(amax - 0.99 * a) <= width
    assert abs(amax - np.percentile(np.abs(x), 99.0)) <= width
    assert collector.compute_amax(percentile=100.0) == collector.max_abs  # clamped to the data


def test_percentile_of_standard_normal():
    rng = np.random.default_rng(4)
    x = rng.standard_normal(2_000_000).astype(np.float32)
    collector = _fed("percentile", *np.split(x, 8))
    amax = collector.compute_amax()  # default 99.99
    assert abs(amax - 3.8906) < 0.05  # P(|x| < 3.8906) = 0.9999
    assert abs(amax - np.percentile(np.abs(x), 99.99)) <= _bin_width(collector)


def test_percentile_is_the_smallest_edge_where_the_cdf_reaches_it():
    counts = np.array([0, 10, 80, 10, 0, 0, 0, 0])
    edges = np.arange(9.0)
    assert percentile_amax(counts, edges, 10.0) == 2.0  # count(|x| < 2) = 10 = 10 %
    assert percentile_amax(counts, edges, 10.1) == 3.0
    assert percentile_amax(counts, edges, 90.0) == 3.0
    assert percentile_amax(counts, edges, 100.0) == 4.0


# ---- entropy -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gaussian_with_outliers() -> np.ndarray:
    rng = np.random.default_rng(5)
    x = rng.standard_normal(1_000_000).astype(np.float32)
    x[:8] = np.float32([20, -19, 18, -17.5, 16, 15, -14, 12])
    return x


def test_entropy_clips_outliers_of_a_gaussian(gaussian_with_outliers):
    collector = _fed("entropy", *np.split(gaussian_with_outliers, 10))
    amax = collector.compute_amax()
    assert collector.max_abs == 20.0
    assert 2.5 < amax < 0.5 * collector.max_abs  # σ = 1: TensorRT-style calibration clips the outliers
    counts, edges = collector.histogram()
    assert amax == entropy_amax(counts, edges)
    assert amax in edges  # a threshold is always a bin edge


def test_entropy_matches_brute_force_kl(gaussian_with_outliers):
    collector = _fed("entropy", gaussian_with_outliers)
    counts, edges = collector.histogram()
    counts_before = counts.copy()
    chosen = int(np.searchsorted(edges, collector.compute_amax()))
    # a handful of thresholds around and away from the optimum, including undefined (inf) ones and the last
    stops = sorted(
        {128, 129, 150, 200, chosen - 7, chosen - 1, chosen, chosen + 1, chosen + 9, 400, 1000, 2048}
    )
    brute = np.array([_nvidia_kl(counts, stop) for stop in stops])
    fast = kl_divergences(counts, stops)
    np.testing.assert_array_equal(np.isinf(fast), np.isinf(brute))
    finite = np.isfinite(brute)
    np.testing.assert_allclose(fast[finite], brute[finite], rtol=1e-9, atol=1e-12)
    assert brute[stops.index(chosen)] <= brute.min() + 1e-12
    np.testing.assert_array_equal(counts, counts_before)  # NVIDIA's code overwrites bin 0 in place; we do not


def test_entropy_on_relu_like_data_is_finite_and_below_max():
    rng = np.random.default_rng(6)
    x = np.maximum(rng.normal(0.2, 1.0, size=(64, 32, 32)), 0).astype(np.float32)  # ~42 % exact zeros
    collector = _fed("entropy", *x)
    amax = collector.compute_amax()
    assert 1.0 < amax <= collector.max_abs
    stride_amax = collector.compute_amax(stride=8)
    assert abs(stride_amax - amax) < 0.1 * amax


# ---- mse ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("distribution", ["laplace", "normal"])
def test_mse_amax_minimises_empirical_qdq_error(distribution):
    rng = np.random.default_rng(7)
    sample = getattr(rng, distribution)(0.0, 1.0, size=200_000).astype(np.float32)
    collector = _fed("mse", *np.split(sample, 4))
    amax = collector.compute_amax()
    assert 0 < amax < collector.max_abs
    grid = np.linspace(0.05, 1.0, 120) * collector.max_abs
    grid_errors = np.array([_empirical_qdq_mse(sample, a) for a in grid])
    assert _empirical_qdq_mse(sample, amax) <= 1.02 * grid_errors.min()
    # the histogram's error estimate tracks the empirical error
    counts, edges = collector.histogram()
    estimate = mse_errors(counts, edges, [amax])[0]
    assert estimate == pytest.approx(_empirical_qdq_mse(sample, amax), rel=0.1)


def test_mse_counts_clipping_and_rounding():
    counts = np.zeros(256, dtype=np.int64)
    counts[100] = 1000  # centre 100.5
    edges = np.arange(257.0)
    assert (
        mse_errors(counts, edges, [100.5])[0] == 0.0
    )  # amax on the value: no clipping, the value is a level
    assert mse_errors(counts, edges, [50.0])[0] == pytest.approx(50.5**2)  # clipped to 50
    assert mse_errors(counts, edges, [127.0])[0] == pytest.approx(0.5**2)  # step 1: rounded to 100 or 101


def test_mse_amax_is_the_best_candidate_centre():
    rng = np.random.default_rng(9)
    counts = rng.poisson(1000 * np.exp(-np.arange(512) / 60.0))
    edges = np.linspace(0.0, 8.0, 513)
    centres = 0.5 * (edges[:-1] + edges[1:])
    direct = []
    for amax in centres[128:]:  # NVIDIA's candidates: the centres of bins 128 .. num_bins - 1
        scale = amax / 127
        direct.append(np.sum(counts * (np.minimum(np.rint(centres / scale), 127) * scale - centres) ** 2))
    assert mse_amax(counts, edges) == centres[128 + int(np.argmin(direct))]
    np.testing.assert_allclose(mse_errors(counts, edges, centres[128:]), np.array(direct) / counts.sum())


# ---- floors, non-finite values and errors ------------------------------------------------------------------


@pytest.mark.parametrize("method", CALIBRATION_METHODS)
def test_all_zero_data_gives_the_documented_floor(method):
    collector = _fed(method, np.zeros((2, 8, 8, 4), dtype=np.float32), np.zeros(10))
    amax = collector.compute_amax()
    assert amax == AMAX_FLOOR > 0
    assert np.float32(amax) / np.float32(127) > 0
    assert np.isfinite(np.float32(amax) / np.float32(127))


@pytest.mark.parametrize("method", CALIBRATION_METHODS)
@pytest.mark.parametrize("data", ["normal", "relu", "constant", "single", "tiny", "int8"])
def test_every_amax_is_a_finite_positive_float_within_the_data(method, data):
    rng = np.random.default_rng(8)
    x = {
        "normal": rng.standard_normal(10_000),
        "relu": np.maximum(rng.standard_normal(10_000), 0),
        "constant": np.full(1000, -0.75),
        "single": np.array([3.0]),
        "tiny": rng.standard_normal(1000) * 1e-30,
        "int8": np.array([-128, 5, 127], dtype=np.int8),
    }[data]
    collector = _fed(method, x)
    amax = collector.compute_amax()
    assert isinstance(amax, float) and np.isfinite(amax)
    assert AMAX_FLOOR <= amax <= max(collector.max_abs, AMAX_FLOOR)
    if data == "int8":
        assert collector.max_abs == 128.0


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("method", ["max", "entropy"])
def test_non_finite_values_raise_with_their_count(method, bad):
    collector = make_collector(method)
    collector.update(np.ones(10))
    batch = np.ones((4, 5), dtype=np.float32)
    batch[0, :3] = bad
    with pytest.raises(ValueError, match=r"3 of 20 values in this batch are not finite.*nonfinite='ignore'"):
        collector.update(batch)
    assert collector.num_values == 10 and collector.max_abs == 1.0  # the bad batch left no trace
    assert collector.compute_amax() == 1.0


@pytest.mark.parametrize("method", CALIBRATION_METHODS)
def test_non_finite_values_can_be_ignored(method):
    collector = make_collector(method, nonfinite="ignore")
    collector.update(np.array([np.nan, np.inf, -np.inf, 0.5, -2.0, np.nan]))
    assert collector.num_nonfinite_ignored == 4
    assert collector.num_values == 2 and collector.max_abs == 2.0
    assert 0 < collector.compute_amax() <= 2.0

    only_bad = make_collector(method, nonfinite="ignore")
    only_bad.update(np.array([np.nan, np.inf]))
    with pytest.raises(ValueError, match="no data collected.*2 values seen were NaN/Inf"):
        only_bad.compute_amax()


@pytest.mark.parametrize("method", CALIBRATION_METHODS)
def test_empty_collector_raises(method):
    collector = make_collector(method)
    collector.update(np.array([], dtype=np.float32))  # an empty batch is not data
    with pytest.raises(ValueError, match=r"no data collected: call update\(\)"):
        collector.compute_amax()


def test_unknown_method_raises_listing_the_valid_ones():
    expected = r"unknown calibration method 'kl'; valid methods are: 'max', 'percentile', 'entropy', 'mse'"
    with pytest.raises(ValueError, match=expected):
        make_collector("kl")
    collector = _fed("entropy", np.ones(4))
    with pytest.raises(ValueError, match=expected):
        collector.compute_amax("kl")
    with pytest.raises(ValueError, match=expected):
        _fed("max", np.ones(4)).compute_amax("kl")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_bins": 1000}, "power of two >= 256"),
        ({"num_bins": 128}, "power of two >= 256"),
        ({"percentile": 0}, r"percentile must be a number in \(0, 100\]"),
        ({"percentile": 100.5}, r"percentile must be a number in \(0, 100\]"),
        ({"nonfinite": "skip"}, "nonfinite must be 'raise' or 'ignore'"),
    ],
)
def test_invalid_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_collector("percentile", **kwargs)


def test_invalid_compute_arguments_raise():
    collector = _fed("entropy", np.linspace(-1, 1, 1000))
    with pytest.raises(ValueError, match="percentile must be"):
        collector.compute_amax("percentile", percentile=-1)
    with pytest.raises(ValueError, match="stride must be"):
        collector.compute_amax("entropy", stride=0)
    with pytest.raises(ValueError, match="start_bin must be"):
        collector.compute_amax("mse", start_bin=4096)
    with pytest.raises(TypeError, match="complex"):
        collector.update(np.ones(3, dtype=np.complex64))


def test_module_imports_no_tensorflow():
    root = Path(__file__).resolve().parents[1]
    code = (
        "import sys\n"
        "import qdq_toolkit.calibration\n"
        "sys.exit(int(any(name.split('.')[0] in ('tensorflow', 'keras') for name in sys.modules)))\n"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=root, timeout=60).returncode == 0
