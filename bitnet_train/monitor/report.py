"""Spikes of a run history as table rows: step, peak, height over baseline, steps to recover, lambda then.

`spike_rows` runs the detector of monitor/spikes.py over a history's train/loss (so the offline
result is what the online monitor flags for the same settings and the same per-step series) and
attaches the lambdas recorded at the onset step. `format_table` prints them aligned.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from bitnet_train.monitor.history import LAMBDA_A, LAMBDA_W, LOSS, RunHistory
from bitnet_train.monitor.spikes import SpikeSettings, find_spikes


@dataclass
class SpikeRow:
    run: str
    step: int
    """Onset: first step with z above the threshold."""
    peak_step: int
    peak: float
    baseline: float
    height: float
    """peak - baseline."""
    recovery_steps: int | None
    """Steps from onset until the loss is back within (1 - recover_fraction) of the height; None: never."""
    z: float
    lambda_weight: float | None
    lambda_activation: float | None

    def as_dict(self) -> dict:
        return asdict(self)


def spike_rows(history: RunHistory, settings: SpikeSettings | None = None) -> list[SpikeRow]:
    steps, losses = history.series(LOSS)
    rows = []
    for spike in find_spikes(steps, losses, settings):
        rows.append(SpikeRow(
            run=history.name, step=spike.onset, peak_step=spike.peak_step, peak=spike.peak, baseline=spike.baseline,
            height=spike.height, recovery_steps=spike.recovery_steps, z=spike.z,
            lambda_weight=history.value_at(LAMBDA_W, spike.onset),
            lambda_activation=history.value_at(LAMBDA_A, spike.onset)))
    return rows


def largest(rows: list[SpikeRow]) -> SpikeRow | None:
    return max(rows, key=lambda r: r.height if math.isfinite(r.height) else math.inf, default=None)


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def format_table(rows: list[SpikeRow]) -> str:
    """Aligned text table; recovery '-' means not recovered by the end of the history."""
    header = ["run", "step", "peak", "height", "recover", "z", "lambda_w", "lambda_a"]
    body = [[r.run, _fmt(r.step), _fmt(r.peak), _fmt(r.height), _fmt(r.recovery_steps), _fmt(r.z, 3),
             _fmt(r.lambda_weight, 3), _fmt(r.lambda_activation, 3)] for r in rows]
    widths = [max(len(h), *(len(row[i]) for row in body)) if body else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in body]
    return "\n".join(lines)
