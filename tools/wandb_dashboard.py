"""Create the loss-spike workspace (a saved W&B view) in your own project, with one command.

    python tools/wandb_dashboard.py --entity ENTITY --project bitnet_train
    python tools/wandb_dashboard.py --entity ENTITY --project bitnet_train --group-by schedule.optimizer
    python tools/wandb_dashboard.py --entity ENTITY --project bitnet_train --dry-run   # print the spec, create nothing

The layout (bitnet_train/monitor/wandb_workspace.py) is built with W&B's `wandb-workspaces`
library: loss and spike events, gradient norms, lambdas and ternary-weight statistics, one line per
run. Creating it needs W&B credentials (`wandb login` or WANDB_API_KEY) and network; --dry-run
needs neither.
"""

from __future__ import annotations

import argparse
import json
import sys

from bitnet_train.lit.loggers import wandb_has_credentials
from bitnet_train.monitor.wandb_workspace import DEFAULT_NAME, build_workspace, save_workspace, workspace_spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entity", required=True, help="W&B user or team that owns the project")
    parser.add_argument("--project", required=True, help="W&B project the runs were logged to")
    parser.add_argument("--name", default=DEFAULT_NAME, help=f"view name (default {DEFAULT_NAME!r})")
    parser.add_argument("--group-by", help="config key that groups the runs, e.g. schedule.optimizer")
    parser.add_argument("--dry-run", action="store_true", help="print the view's JSON spec and create nothing")
    args = parser.parse_args(argv)
    try:
        workspace = build_workspace(args.entity, args.project, args.name, args.group_by)
    except ImportError:
        print("error: the W&B workspace needs the wandb-workspaces package: pip install wandb-workspaces",
              file=sys.stderr)
        return 2
    if args.dry_run:
        print(json.dumps(workspace_spec(workspace), indent=2))
        return 0
    if not wandb_has_credentials():
        print("error: no W&B credentials found; run `wandb login` (or set WANDB_API_KEY), or use --dry-run",
              file=sys.stderr)
        return 2
    print(save_workspace(workspace))
    return 0


if __name__ == "__main__":
    sys.exit(main())
