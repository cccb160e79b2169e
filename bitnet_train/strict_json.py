"""Strict JSON: NaN and infinities (which json.dumps writes as the non-standard NaN/Infinity) become null.

Strict readers (RFC 8259: JavaScript's JSON.parse, jq, most non-Python parsers) reject NaN and
Infinity. `strict_json(obj)` returns a copy of `obj` with every non-finite float replaced by None
(and tuples as lists), so that `json.dumps(strict_json(obj), allow_nan=False)` always succeeds.
"""

from __future__ import annotations

import math
from typing import Any


def strict_json(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", None) == 0:  # numpy / torch scalars
        return strict_json(obj.item())
    return obj
