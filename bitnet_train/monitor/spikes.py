"""Loss-spike detection with a robust z-score against a trailing window, online or over a whole history.

At each step the loss is compared with the previous `window` values (the current one excluded):

    baseline = median(window)        scale = max(1.4826 * MAD(window), min_rel_scale * |baseline|)
    z        = (loss - baseline) / scale

1.4826 * MAD estimates the standard deviation of Gaussian noise and, like the median, ignores a
few outliers, so earlier spikes do not hide later ones; the floor keeps a nearly flat curve from
turning rounding noise into spikes. A training curve that falls has z < 0, so the trend itself
never fires. A spike *begins* when z > threshold (after `min_history` values); from then on the
event follows the loss: its peak is the highest loss, its height is peak - baseline (the baseline
frozen at onset), and it *recovers* at the first step where the median of the last
`recover_window` losses after the peak is back below baseline + (1 - recover_fraction) * height
(a median, so that one lucky noisy step does not end a spike; recovery is therefore at least
`recover_window` steps after the peak). Flags while an event is open belong to that event. An
event that has not recovered after `max_event_steps` is closed as not recovered (a lasting level
shift), and detection starts afresh.

The same SpikeDetector runs online in the spike monitor callback and offline in tools/spikes.py.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass, field

MAD_TO_SIGMA = 1.4826
"""Consistency factor: MAD * 1.4826 estimates the standard deviation of normally distributed noise."""


@dataclass
class SpikeSettings:
    window: int = 50
    """Trailing values the baseline and scale are computed from."""
    threshold: float = 6.0
    """Robust z-score above which a spike begins."""
    min_history: int = 20
    """Values needed in the window before anything is flagged."""
    min_rel_scale: float = 0.005
    """Floor of the scale, as a fraction of |baseline|."""
    recover_fraction: float = 0.9
    """Recovered once this share of the height is gone again."""
    recover_window: int = 5
    """Post-peak losses whose median must be back down (1: the first single step counts)."""
    max_event_steps: int = 1000
    """An event still open after this many steps closes as not recovered."""

    def __post_init__(self) -> None:
        from bitnet_train.config import ConfigError

        if not (isinstance(self.window, int) and self.window >= 3):
            raise ConfigError(f"spike window={self.window!r} must be an integer >= 3")
        if not (isinstance(self.min_history, int) and 3 <= self.min_history <= self.window):
            raise ConfigError(f"spike min_history={self.min_history!r} must be an integer in [3, window={self.window}]")
        if not self.threshold > 0:
            raise ConfigError(f"spike threshold={self.threshold!r} must be > 0")
        if not 0 < self.recover_fraction <= 1:
            raise ConfigError(f"spike recover_fraction={self.recover_fraction!r} must be in (0, 1]")
        if not self.min_rel_scale >= 0:
            raise ConfigError(f"spike min_rel_scale={self.min_rel_scale!r} must be >= 0")
        if not (isinstance(self.recover_window, int) and self.recover_window >= 1):
            raise ConfigError(f"spike recover_window={self.recover_window!r} must be an integer >= 1")
        if not (isinstance(self.max_event_steps, int) and self.max_event_steps >= 1):
            raise ConfigError(f"spike max_event_steps={self.max_event_steps!r} must be an integer >= 1")


@dataclass
class Spike:
    """One spike event."""

    onset: int
    """Step at which the z-score first crossed the threshold."""
    z: float
    """z-score at onset."""
    baseline: float
    """Median of the window before the onset."""
    peak: float
    peak_step: int
    recovered_step: int | None = None
    """First step at which the recent post-peak median is back below baseline + (1 - recover_fraction) * height;
    None if it never was."""
    closed: bool = False

    @property
    def height(self) -> float:
        return self.peak - self.baseline

    @property
    def recovery_steps(self) -> int | None:
        """Steps from onset to recovery (None: not recovered)."""
        return None if self.recovered_step is None else self.recovered_step - self.onset


@dataclass
class SpikeDetector:
    """Feed (step, loss) in order with `update`; it returns the events that began or ended at that step."""

    settings: SpikeSettings = field(default_factory=SpikeSettings)
    spikes: list[Spike] = field(default_factory=list)
    last_z: float = 0.0

    def __post_init__(self) -> None:
        self._window: deque[float] = deque(maxlen=self.settings.window)
        self._recent: deque[float] = deque(maxlen=self.settings.recover_window)
        self._open: Spike | None = None

    def score(self, value: float) -> float:
        """Robust z-score of `value` against the current window (0 until min_history values)."""
        if len(self._window) < self.settings.min_history:
            return 0.0
        values = list(self._window)
        baseline = statistics.median(values)
        mad = statistics.median(abs(v - baseline) for v in values)
        scale = max(MAD_TO_SIGMA * mad, self.settings.min_rel_scale * abs(baseline), 1e-12)
        return (value - baseline) / scale

    def update(self, step: int, value: float) -> list[tuple[str, Spike]]:
        """Process one value; returns [("onset", spike)] and/or [("end", spike)] for events at this step."""
        events: list[tuple[str, Spike]] = []
        if not math.isfinite(value):
            self.last_z = math.inf
            if self._open is None:  # a NaN/inf loss is the largest spike there is: peak and height inf
                self._open = Spike(step, math.inf, self._baseline(), math.inf, step)
                self._recent.clear()
                self.spikes.append(self._open)
                events.append(("onset", self._open))
            return events
        z = self.score(value)
        self.last_z = z
        spike = self._open
        if spike is not None:
            if math.isfinite(spike.peak) and value > spike.peak:
                spike.peak, spike.peak_step = value, step
                self._recent.clear()
            elif step > spike.peak_step:
                self._recent.append(value)
            level = spike.baseline + (1.0 - self.settings.recover_fraction) * spike.height
            recent = self._recent
            if len(recent) == recent.maxlen and statistics.median(recent) <= level:
                spike.recovered_step = step
                events.append(("end", self._close()))
            elif step - spike.onset >= self.settings.max_event_steps:
                events.append(("end", self._close()))
        elif z > self.settings.threshold:
            self._recent.clear()
            self._open = Spike(step, z, self._baseline(), value, step)
            self.spikes.append(self._open)
            events.append(("onset", self._open))
        self._window.append(value)
        return events

    def finish(self) -> list[Spike]:
        """Close an open event (not recovered) and return every spike found."""
        if self._open is not None:
            self._close()
        return self.spikes

    def _baseline(self) -> float:
        return statistics.median(self._window) if self._window else math.nan

    def _close(self) -> Spike:
        spike, self._open = self._open, None
        spike.closed = True
        return spike


def find_spikes(steps: list[int], values: list[float], settings: SpikeSettings | None = None) -> list[Spike]:
    """Every spike of a whole series (steps ascending)."""
    detector = SpikeDetector(settings or SpikeSettings())
    for step, value in zip(steps, values):
        detector.update(step, value)
    return detector.finish()
