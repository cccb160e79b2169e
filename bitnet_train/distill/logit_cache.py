"""A disk cache of teacher logits for stage 3 (distill.stage3.logit_cache.enabled=true).

For every training item (packed block or prompt/answer example, by its index in the training set) the
cache keeps, per position, the teacher's k largest log-probabilities at the distillation temperature, their
token ids and the log of the remaining mass (losses.teacher_top_k): 8k + 4 bytes a position instead of 4V.
Before stage 3 trains, each process computes the rows for the items its own training stream will visit
(the stream is a function of the step, so these are known in advance) and skips rows already filled, so
repeated epochs, later runs and resumed runs never run the teacher's full forward for them again.

Files are numpy memory maps in `<dir>/<key>/`, key = a hash of everything the values depend on (teacher,
tokenized data, sequence length, k, temperature): values.f32 [N, S, k], indices.i32 [N, S, k],
rest.f32 [N, S] and filled.u8 [N], whose flag is set only after a row's data is flushed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch


class TeacherLogitCache:
    def __init__(self, root: str | Path, num_items: int, seq_len: int, top_k: int, identity: dict[str, Any]) -> None:
        self.num_items, self.seq_len, self.top_k = int(num_items), int(seq_len), int(top_k)
        meta = {**identity, "num_items": self.num_items, "seq_len": self.seq_len, "top_k": self.top_k, "version": 1}
        key = hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode()).hexdigest()[:16]
        self.dir = Path(root) / key
        self.meta = meta
        self._maps: dict[str, np.memmap] | None = None

    def _shapes(self) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
        n, s, k = self.num_items, self.seq_len, self.top_k
        return {"values.f32": (np.float32, (n, s, k)), "indices.i32": (np.int32, (n, s, k)),
                "rest.f32": (np.float32, (n, s)), "filled.u8": (np.uint8, (n,))}

    def create(self) -> None:
        """Create the (zero-filled) files if they do not exist yet; call on one process before `open`."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for name, (dtype, shape) in self._shapes().items():
            path = self.dir / name
            if not path.exists():
                tmp = path.with_name(path.name + ".tmp")
                np.memmap(tmp, dtype=dtype, mode="w+", shape=shape).flush()
                tmp.replace(path)
        meta = self.dir / "meta.json"
        if not meta.exists():
            meta.write_text(json.dumps(self.meta, indent=1, default=str) + "\n")

    def open(self) -> "TeacherLogitCache":
        self._maps = {name: np.memmap(self.dir / name, dtype=dtype, mode="r+", shape=shape)
                      for name, (dtype, shape) in self._shapes().items()}
        return self

    @property
    def maps(self) -> dict[str, np.memmap]:
        if self._maps is None:
            self.open()
        return self._maps

    def missing(self, items: Iterable[int]) -> list[int]:
        filled = self.maps["filled.u8"]
        return sorted(i for i in set(int(x) for x in items) if not filled[i])

    def filled_count(self) -> int:
        return int(np.count_nonzero(self.maps["filled.u8"]))

    def store(self, items: torch.Tensor | list[int], values: torch.Tensor, indices: torch.Tensor,
              log_rest: torch.Tensor) -> None:
        """Write the rows of `items` ([n] ids; values/indices [n, S, k], log_rest [n, S]) and mark them filled."""
        rows = np.asarray(items, dtype=np.int64)
        maps = self.maps
        maps["values.f32"][rows] = values.detach().float().cpu().numpy()
        maps["indices.i32"][rows] = indices.detach().to(torch.int32).cpu().numpy()
        maps["rest.f32"][rows] = log_rest.detach().float().cpu().numpy()
        for name in ("values.f32", "indices.i32", "rest.f32"):
            maps[name].flush()
        maps["filled.u8"][rows] = 1
        maps["filled.u8"].flush()

    def load(self, items: torch.Tensor, device: torch.device | str = "cpu"
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(values, indices, log_rest) of `items`; every item must have been stored."""
        rows = items.detach().cpu().numpy().astype(np.int64)
        maps = self.maps
        if not maps["filled.u8"][rows].all():
            absent = [int(r) for r in rows if not maps["filled.u8"][r]]
            raise RuntimeError(f"teacher logits of items {absent[:5]} are not in the cache {self.dir}")
        values = torch.from_numpy(np.ascontiguousarray(maps["values.f32"][rows]))
        indices = torch.from_numpy(np.ascontiguousarray(maps["indices.i32"][rows]).astype(np.int64))
        rest = torch.from_numpy(np.ascontiguousarray(maps["rest.f32"][rows]))
        return values.to(device), indices.to(device), rest.to(device)
