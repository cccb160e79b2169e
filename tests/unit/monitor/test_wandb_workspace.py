"""The W&B loss-spike workspace is built with wandb-workspaces, offline, and creates nothing unless saved."""

from __future__ import annotations

import json
import socket

import pytest

pytest.importorskip("wandb_workspaces")

from bitnet_train.monitor.wandb_workspace import X_AXIS, build_workspace, workspace_spec  # noqa: E402


@pytest.fixture
def offline(monkeypatch):
    """Any network use or W&B API client fails the test."""
    import wandb

    def refuse(*args, **kwargs):
        raise AssertionError("the workspace definition must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(wandb, "Api", refuse)


def _panels(spec):
    sections = spec["section"]["panelBankConfig"]["sections"]
    return {s["name"]: [p["config"] for p in s["panels"]] for s in sections}


def test_definition_offline(offline):
    import wandb_workspaces.workspaces as ws

    workspace = build_workspace("my-team", "bitnet_train", group_by="schedule.optimizer")
    assert isinstance(workspace, ws.Workspace)
    spec = workspace_spec(workspace)
    panels = _panels(spec)
    assert list(panels) == ["Loss and spikes", "Gradients", "Quantization phase-in", "Ternary weights"]
    metrics = {m for configs in panels.values() for c in configs for m in c.get("metrics", [])}
    for key in ("train/loss", "val/loss", "spike/z", "spike/onset", "spike/height", "spike/recovery_steps",
                "grad_norm/total", "lr", "lambda/weight", "lambda/activation", "monitor/zero_frac",
                "monitor/flip_frac", "quant/gamma_mean"):
        assert key in metrics, key
    regexes = {c["metricRegex"] for configs in panels.values() for c in configs if c.get("useMetricRegex")}
    assert regexes == {r"schedule/transition/.*", r"grad_norm/layers\..*", r"lambda/weight/layers\..*",
                       r"lambda/activation/layers\..*"}
    assert all(c["xAxis"] == X_AXIS for configs in panels.values() for c in configs)
    runset = spec["section"]["runSets"][0]
    assert runset["grouping"] == [{"section": "config", "name": "schedule.value.optimizer"}]
    assert spec["section"]["settings"]["xAxis"] == X_AXIS
    json.dumps(spec)  # what W&B stores: plain JSON


def test_dashboard_tool(offline, capsys, load_tool, monkeypatch):
    tool = load_tool("wandb_dashboard")
    assert tool.main(["--entity", "e", "--project", "p", "--dry-run"]) == 0
    spec = json.loads(capsys.readouterr().out)
    assert "Loss and spikes" in json.dumps(spec)
    monkeypatch.setattr(tool, "wandb_has_credentials", lambda: False)
    assert tool.main(["--entity", "e", "--project", "p"]) == 2
    assert "wandb login" in capsys.readouterr().err
