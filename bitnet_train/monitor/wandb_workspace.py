"""The W&B loss-spike workspace: a saved view of a project laid out for watching the 16 -> 1.58-bit switch.

Built with W&B's own `wandb-workspaces` library (`wandb_workspaces.workspaces` for the view,
`wandb_workspaces.reports.v2` for the panels). `build_workspace` only constructs the definition
(no network); `workspace_spec` is the JSON W&B would store; `save_workspace` creates it in the
user's project (needs credentials: `wandb login`). Sections, every panel one line per run,
x axis = the trainer's global step:

  Loss and spikes        train/loss, val/loss, spike/z, spike events (spike/onset = height at onset,
                         spike/height, spike/recovery_steps), transitions (schedule/transition/*)
  Gradients              grad_norm/total (log scale), grad_norm per decoder layer, learning rate
  Quantization phase-in  lambda/weight, lambda/activation, lambda per decoder layer
  Ternary weights        zero fraction and code flips (monitor/*, quant/*), mean scale gamma

`group_by` (a config key such as schedule.optimizer) groups the runs in the run selector.
"""

from __future__ import annotations

from typing import Any

X_AXIS = "trainer/global_step"
DEFAULT_NAME = "BitNet loss spikes"


def _line(title: str, y: list[str] | None = None, regex: str | None = None, log_y: bool | None = None):
    import wandb_workspaces.reports.v2 as wr

    kwargs: dict[str, Any] = {"title": title, "x": X_AXIS, "y": list(y or [])}
    if regex is not None:
        kwargs["metric_regex"] = regex
    if log_y:
        kwargs["log_y"] = True
    return wr.LinePlot(**kwargs)


def sections() -> list:
    """The workspace sections with their panels."""
    import wandb_workspaces.workspaces as ws

    return [
        ws.Section(name="Loss and spikes", is_open=True, panels=[
            _line("train loss", ["train/loss"]),
            _line("validation loss", ["val/loss"]),
            _line("spike z-score (robust, trailing window)", ["spike/z"]),
            _line("spike events: height at onset / at peak", ["spike/onset", "spike/height"]),
            _line("steps to recover", ["spike/recovery_steps"]),
            _line("transitions", regex=r"schedule/transition/.*"),
        ]),
        ws.Section(name="Gradients", is_open=True, panels=[
            _line("gradient norm (before clipping)", ["grad_norm/total"], log_y=True),
            _line("gradient norm per layer", regex=r"grad_norm/layers\..*", log_y=True),
            _line("learning rate", ["lr", "lr-AdamW"]),
        ]),
        ws.Section(name="Quantization phase-in", is_open=True, panels=[
            _line("lambda (mean over quantized linears)", ["lambda/weight", "lambda/activation"]),
            _line("weight lambda per layer", regex=r"lambda/weight/layers\..*"),
            _line("activation lambda per layer", regex=r"lambda/activation/layers\..*"),
        ]),
        ws.Section(name="Ternary weights", is_open=True, panels=[
            _line("zero fraction of ternary codes", ["monitor/zero_frac", "quant/zero_frac"]),
            _line("code flips since the last record (sign flips and 0 <-> +-1)", ["monitor/flip_frac", "quant/flip_frac"]),
            _line("mean weight scale gamma", ["quant/gamma_mean"]),
        ]),
    ]


def build_workspace(entity: str, project: str, name: str = DEFAULT_NAME, group_by: str | None = None):
    """The workspace definition (a wandb_workspaces Workspace); creates nothing."""
    import wandb_workspaces.workspaces as ws

    runset = ws.RunsetSettings(groupby=[ws.Config(group_by)] if group_by else [])
    return ws.Workspace(entity=entity, project=project, name=name, sections=sections(),
                        settings=ws.WorkspaceSettings(x_axis=X_AXIS, point_visualization_method="bucketing"),
                        runset_settings=runset)


def workspace_spec(workspace) -> dict[str, Any]:
    """The view spec as W&B stores it (what `save` uploads), as a plain dict."""
    return workspace._to_model().spec.model_dump(by_alias=True, exclude_none=True, mode="json")


def save_workspace(workspace) -> str:
    """Create the view in W&B and return its URL (network and credentials needed)."""
    return workspace.save().url
