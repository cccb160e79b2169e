"""`python -m bitnet_train [+experiment=NAME] [key=value ...]`: compose the Hydra config and train.

Configuration and input mistakes end with one line on stderr (`error: ...`) and exit status 2; a run that gives
up (non-finite losses under the stop policy, a full disk while checkpointing) ends with one line and status 3.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from bitnet_train.config import ConfigError


@hydra.main(config_path="pkg://bitnet_train.conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from bitnet_train.lit.checkpoint_io import CheckpointSpaceError, NonFiniteTrainingError
    from bitnet_train.run import train  # heavy imports after Hydra has parsed the command line

    try:
        train(cfg)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except (NonFiniteTrainingError, CheckpointSpaceError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(3)


if __name__ == "__main__":
    main()
