"""The spike detector finds known spikes in synthetic loss curves and raises none on smooth noisy ones."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bitnet_train.config import ConfigError
from bitnet_train.monitor.spikes import SpikeDetector, SpikeSettings, find_spikes

STEPS = 2000


def _curve(seed: int, noise: float = 0.05, ar: float = 0.0) -> np.ndarray:
    """A falling training curve 2 + 3 exp(-t/300) with Gaussian (optionally AR(1)-correlated) noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(STEPS)
    eps = rng.normal(0.0, noise, STEPS)
    if ar:
        for i in range(1, STEPS):
            eps[i] = ar * eps[i - 1] + math.sqrt(1 - ar * ar) * eps[i]
    return 2.0 + 3.0 * np.exp(-t / 300) + eps


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("noise,ar", [(0.02, 0.0), (0.08, 0.0), (0.05, 0.6)])
def test_no_spikes_on_smooth_noisy_curves(seed, noise, ar):
    curve = _curve(seed, noise, ar)
    assert find_spikes(list(range(STEPS)), curve.tolist()) == []


def test_no_spikes_on_a_noiseless_plateau_or_slow_rise():
    flat = [3.0] * 300
    assert find_spikes(list(range(300)), flat) == []
    drift = [3.0 + 1e-4 * i for i in range(300)]  # a gentle upward drift is not a spike
    assert find_spikes(list(range(300)), drift) == []


@pytest.mark.parametrize("seed", range(3))
def test_finds_known_spikes_with_height_and_recovery(seed):
    curve = _curve(seed, 0.05)
    t = np.arange(STEPS)
    # an abrupt jump of 1.0 at step 600 that decays with time constant 20 steps ...
    curve += np.where(t >= 600, 1.0 * np.exp(-(t - 600) / 20.0), 0.0)
    # ... and a one-step spike of 0.6 at step 1400
    curve[1400] += 0.6
    spikes = find_spikes(list(range(STEPS)), curve.tolist())
    assert [s.onset for s in spikes] == [600, 1400], [(s.onset, s.height) for s in spikes]
    first, second = spikes
    assert first.height == pytest.approx(1.0, abs=0.2)
    assert 600 <= first.peak_step <= 610  # the first steps of the decay are within noise of each other
    # 90% of a decay with tau = 20 is gone after 20 ln 10 = 46 steps
    assert 25 <= first.recovery_steps <= 75, first.recovery_steps
    assert second.height == pytest.approx(0.6, abs=0.15)
    assert second.recovery_steps == 5  # the median of 5 post-peak steps decides: recovery is never quicker
    assert all(s.closed for s in spikes)


def test_online_detection_reports_onset_then_end():
    det = SpikeDetector(SpikeSettings(window=20, min_history=10))
    events = []
    values = [5.0 - 0.001 * i + 0.01 * ((-1) ** i) for i in range(40)] + [7.0, 6.0, 5.5, 4.97, 4.96, 4.95, 4.95]
    for step, v in enumerate(values):
        events += [(kind, step) for kind, _ in det.update(step, v)]
    # post-peak medians: 6.0, 5.75, 5.5, 5.235 (not yet 5 values), then median(6.0 .. 4.95) = 4.97 <= 5.18
    assert events == [("onset", 40), ("end", 45)]
    (spike,) = det.spikes
    assert spike.recovered_step == 45 and spike.recovery_steps == 5 and spike.peak == 7.0
    strict = SpikeDetector(SpikeSettings(window=20, min_history=10, recover_window=1))
    for step, v in enumerate(values):
        strict.update(step, v)
    assert strict.spikes[0].recovered_step == 43  # the first single step below the level


def test_unrecovered_spike_and_level_shift():
    values = [3.0 + 0.01 * ((-1) ** i) for i in range(60)] + [5.0] * 100
    (spike,) = find_spikes(list(range(160)), values)
    assert spike.onset == 60 and spike.recovered_step is None and spike.recovery_steps is None
    settings = SpikeSettings(max_event_steps=30)
    # closed as not recovered after 30 steps, then the new level becomes the baseline: no second flag
    assert [(s.onset, s.recovered_step) for s in find_spikes(list(range(160)), values, settings)] == [(60, None)]


def test_nan_loss_is_a_spike():
    values = [3.0 + 0.01 * ((-1) ** i) for i in range(30)] + [math.nan] + [3.0] * 5
    (spike,) = find_spikes(list(range(36)), values)
    assert spike.onset == 30 and spike.z == math.inf and spike.height == math.inf and spike.recovery_steps == 5


@pytest.mark.parametrize("kwargs,match", [
    ({"window": 2}, "window"), ({"min_history": 100}, "min_history"), ({"threshold": 0}, "threshold"),
    ({"recover_fraction": 1.5}, "recover_fraction"), ({"max_event_steps": 0}, "max_event_steps"),
    ({"recover_window": 0}, "recover_window"),
])
def test_settings_validation(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SpikeSettings(**kwargs)
