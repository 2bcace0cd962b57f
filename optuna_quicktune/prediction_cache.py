"""The one bounded cache of a sampler's predictions (least recently used entries are dropped).

Why one: the sampler, the pruner and the dashboard read the same :class:`~.decision.Decision`
objects, and their predictions (pool, neighbours, paused runs, step costs) are keyed by the
surrogate view they came from, so a single bound keeps a long study's memory flat.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

__all__ = ["PredictionCache"]


class PredictionCache:
    """The one bounded cache of predictions (least recently used entries are dropped).

    Keys start with the surrogate's ``view_id``; a conditioned view is a new view, so stale
    predictions are never read, only aged out.
    """

    def __init__(self, maxsize: int = 4096) -> None:
        self.maxsize = int(maxsize)
        self._data: OrderedDict[Hashable, Any] = OrderedDict()

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        if key in self._data:
            self._data.move_to_end(key)
            return self._data[key]
        value = compute()
        self._data[key] = value
        while len(self._data) > self.maxsize:
            self._data.popitem(last=False)
        return value

    def clear(self) -> None:
        self._data.clear()

    def __contains__(self, key: Hashable) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)
