"""Checks of the trainer group (Lightning Trainer arguments) before compute, one line each.

Each known key gets its type and range checked with the fix named in the message; an unknown key
(not an argument of lightning.pytorch.Trainer) is refused with the closest known names. Values
Lightning accepts in several forms (devices: int, list or "auto"; val_check_interval: int steps
or a float fraction) are accepted in each of them.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping
from typing import Any

from bitnet_train.config import ConfigError

PRECISIONS = ("64", "64-true", "32", "32-true", "16", "16-mixed", "16-true", "bf16", "bf16-mixed", "bf16-true",
              "transformer-engine", "transformer-engine-float16")


def _int(key: str, value: Any, low: int | None, allow: tuple = ()) -> None:
    if value in allow and not isinstance(value, bool):
        return
    if isinstance(value, bool) or not isinstance(value, int):
        extra = f" (or {', '.join(map(repr, allow))})" if allow else ""
        raise ConfigError(f"trainer.{key}={value!r} must be an integer{extra}; e.g. trainer.{key}="
                          f"{low if low is not None and low > 0 else 1}")
    if low is not None and value < low:
        raise ConfigError(f"trainer.{key}={value} must be >= {low}")


def _number(key: str, value: Any, low: float, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"trainer.{key}={value!r} must be a number >= {low}" + (" or null" if allow_none else ""))
    if value < low:
        raise ConfigError(f"trainer.{key}={value} must be >= {low}")


def _bool(key: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"trainer.{key}={value!r} must be true or false")




def check_trainer_settings(trainer_cfg: Mapping[str, Any]) -> None:
    """Raise a one-line ConfigError for the first trainer.* value of the wrong type or out of range."""
    from lightning.pytorch import Trainer

    cfg = dict(trainer_cfg)
    known = set(inspect.signature(Trainer.__init__).parameters) - {"self"}
    for key in cfg:
        if key.startswith("_"):
            continue
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=2)
            raise ConfigError(f"trainer.{key} is not a Lightning Trainer setting"
                              + (f"; did you mean {' or '.join('trainer.' + c for c in close)}?" if close else ""))
    get = cfg.get
    if "max_steps" in cfg:
        _int("max_steps", get("max_steps"), 1, allow=(-1,))
    for key in ("min_steps", "max_epochs", "min_epochs"):
        if get(key) is not None:
            _int(key, get(key), 0, allow=(-1,) if key == "max_epochs" else ())
    if "accumulate_grad_batches" in cfg:
        _int("accumulate_grad_batches", get("accumulate_grad_batches"), 1)
    if "log_every_n_steps" in cfg and get("log_every_n_steps") is not None:
        _int("log_every_n_steps", get("log_every_n_steps"), 1)
    if "num_nodes" in cfg:
        _int("num_nodes", get("num_nodes"), 1)
    if get("num_sanity_val_steps") is not None:
        _int("num_sanity_val_steps", get("num_sanity_val_steps"), -1)
    if get("check_val_every_n_epoch") is not None:
        _int("check_val_every_n_epoch", get("check_val_every_n_epoch"), 1)
    if "gradient_clip_val" in cfg:
        _number("gradient_clip_val", get("gradient_clip_val"), 0.0)
    if get("gradient_clip_algorithm") not in (None, "norm", "value"):
        raise ConfigError(f"trainer.gradient_clip_algorithm={get('gradient_clip_algorithm')!r} must be norm or value")
    for key in ("val_check_interval", "limit_train_batches", "limit_val_batches", "limit_test_batches",
                "limit_predict_batches", "overfit_batches"):
        value = get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"trainer.{key}={value!r} must be an integer (batches) or a fraction in [0, 1]")
        if isinstance(value, float) and not 0.0 <= value <= 1.0:
            raise ConfigError(f"trainer.{key}={value} is a fraction outside [0, 1]; give a fraction or an integer")
        if isinstance(value, int) and value < (1 if key == "val_check_interval" else 0):
            raise ConfigError(f"trainer.{key}={value} must be >= {1 if key == 'val_check_interval' else 0}")
    devices = get("devices")
    if devices is not None and not (devices == "auto" or isinstance(devices, (list, tuple))
                                    or (isinstance(devices, int) and not isinstance(devices, bool)
                                        and (devices >= 1 or devices == -1))
                                    or (isinstance(devices, str) and devices.replace(",", "").strip().lstrip("-").isdigit())):
        raise ConfigError(f"trainer.devices={devices!r} must be auto, a count >= 1 (-1: all), or a list of device ids")
    precision = get("precision")
    if precision is not None and str(precision) not in PRECISIONS:
        raise ConfigError(f"trainer.precision={precision!r} is not one of {', '.join(PRECISIONS)}")
    for key in ("enable_model_summary", "enable_checkpointing", "enable_progress_bar", "use_distributed_sampler",
                "benchmark", "inference_mode", "sync_batchnorm", "detect_anomaly", "barebones"):
        if get(key) is not None:
            _bool(key, get(key))
    fast = get("fast_dev_run")
    if fast is not None and not isinstance(fast, bool) and not (isinstance(fast, int) and fast >= 0):
        raise ConfigError(f"trainer.fast_dev_run={fast!r} must be true, false or a number of batches >= 0")
