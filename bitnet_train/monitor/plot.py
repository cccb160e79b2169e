"""Overlay plot of run histories: loss, gradient norm and lambda against the step, transitions and spikes marked.

Three panels share the step axis: training loss (each step faint, an exponential moving average
drawn over it), global gradient norm (log scale, same smoothing) and the mean weight lambda
(the phase-in). With `zoom=(first, last)` a fourth panel, on top, repeats the loss over those
steps only (the transition up close). Each run has one colour; its transitions are dashed vertical lines in that
colour, its spikes are marked at their peaks. Written with matplotlib's Agg backend (no display),
stored as a palette PNG (small enough to commit).
"""

from __future__ import annotations

import io
from pathlib import Path

from bitnet_train.monitor.history import GRAD_NORM, LAMBDA_W, LOSS, RunHistory
from bitnet_train.monitor.report import SpikeRow


def ema(values: list[float], alpha: float) -> list[float]:
    """Exponential moving average, y_t = alpha * x_t + (1 - alpha) * y_{t-1}; alpha = 1 leaves values as they are."""
    out, y = [], None
    for x in values:
        y = x if y is None else alpha * x + (1.0 - alpha) * y
        out.append(y)
    return out


def plot_runs(histories: list[RunHistory], spikes: dict[str, list[SpikeRow]], path: str | Path, *,
              smoothing: float = 0.1, title: str | None = None, loss_ylim: tuple[float, float] | None = None,
              zoom: tuple[int, int] | None = None, dpi: int = 100) -> Path:
    """Write the overlay PNG to `path` and return it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ax_zoom = None
    if zoom is None:
        fig, (ax_loss, ax_grad, ax_lam) = plt.subplots(3, 1, figsize=(9, 8), sharex=True,
                                                       gridspec_kw={"height_ratios": [3, 2, 1]})
    else:
        fig = plt.figure(figsize=(9, 11))
        grid = fig.add_gridspec(4, 1, height_ratios=[3, 3, 2, 1])
        ax_zoom = fig.add_subplot(grid[0])
        ax_loss = fig.add_subplot(grid[1])
        ax_grad = fig.add_subplot(grid[2], sharex=ax_loss)
        ax_lam = fig.add_subplot(grid[3], sharex=ax_loss)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, history in enumerate(histories):
        color = colors[i % len(colors)]
        steps, loss = history.series(LOSS)
        ax_loss.plot(steps, loss, color=color, alpha=0.25, linewidth=0.6)
        ax_loss.plot(steps, ema(loss, smoothing), color=color, linewidth=1.4, label=history.name)
        g_steps, grad = history.series(GRAD_NORM)
        if g_steps:
            ax_grad.plot(g_steps, grad, color=color, alpha=0.25, linewidth=0.6)
            ax_grad.plot(g_steps, ema(grad, smoothing), color=color, linewidth=1.2)
        l_steps, lam = history.series(LAMBDA_W)
        if l_steps:
            ax_lam.plot(l_steps, lam, color=color, linewidth=1.2)
        for step, _name in history.transitions:
            for ax in (ax_loss, ax_grad, ax_lam):
                ax.axvline(step, color=color, linestyle="--", linewidth=0.9, alpha=0.8)
        rows = spikes.get(history.name, [])
        if rows:
            ax_loss.scatter([r.peak_step for r in rows], [r.peak for r in rows], color=color, marker="v", s=40,
                            zorder=5, edgecolors="black", linewidths=0.5)
        if ax_zoom is not None:
            inside = [i for i, s in enumerate(steps) if zoom[0] <= s <= zoom[1]]
            ax_zoom.plot([steps[i] for i in inside], [loss[i] for i in inside], color=color, linewidth=0.9,
                         label=history.name)
            for step, _name in history.transitions:
                if zoom[0] <= step <= zoom[1]:
                    ax_zoom.axvline(step, color=color, linestyle="--", linewidth=0.9, alpha=0.8)
            marks = [r for r in rows if zoom[0] <= r.peak_step <= zoom[1]]
            if marks:
                ax_zoom.scatter([r.peak_step for r in marks], [r.peak for r in marks], color=color, marker="v",
                                s=40, zorder=5, edgecolors="black", linewidths=0.5)
    if ax_zoom is not None:
        ax_zoom.set_ylabel(f"train loss, steps {zoom[0]}-{zoom[1]}\n(every step)")
        ax_zoom.grid(alpha=0.3)
        ax_zoom.legend(loc="upper right", fontsize=8)
        ax_zoom.set_xlim(*zoom)
    ax_loss.set_ylabel("train loss")
    if loss_ylim is not None:
        ax_loss.set_ylim(*loss_ylim)
    ax_loss.legend(loc="upper right", fontsize=8)
    ax_loss.grid(alpha=0.3)
    ax_grad.set_ylabel("grad norm")
    ax_grad.set_yscale("log")
    ax_grad.grid(alpha=0.3)
    ax_lam.set_ylabel("lambda (w)")
    ax_lam.set_ylim(-0.05, 1.05)
    ax_lam.set_xlabel("optimizer step")
    ax_lam.grid(alpha=0.3)
    fig.suptitle(title or "loss, gradient norm and quantization strength (dashed: transitions, v: spikes)",
                 fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    # a 256-colour palette keeps the file small (plots have few colours) without visible change
    from PIL import Image

    buffer.seek(0)
    Image.open(buffer).convert("RGB").quantize(colors=256).save(path, format="PNG", optimize=True)
    return path
