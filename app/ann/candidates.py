"""What searches ask the vector cache: the nearest chunk ids for a query vector, over-fetched
for a restricted search by the share of candidates such searches saw pass their checks."""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np

from app.ann.index import VectorIndex

# The share of candidates expected to pass before any was seen, how fast the estimate
# follows what is seen, and how many restrictions are remembered.
FIRST_PASS_RATE = 0.25
PASS_RATE_WEIGHT = 0.5
PASS_RATES_KEPT = 4096


@dataclass(frozen=True)
class Candidates:
    """Nearest chunk ids from the cache, the position they reflect, and whether they are
    partial: fewer than every vector the index holds (so more might pass the filters). An IVF
    index searches some of its lists, and HNSW skips tombstones, so either may return fewer
    than were asked and still not all."""

    ids: list[int]
    position: str
    partial: bool
    asked: int


class PassRates:
    """Per restriction (collection, principals, filter), the share of candidates that passed."""

    def __init__(self, max_candidates: int) -> None:
        self.max_candidates = max_candidates
        self._rates: OrderedDict[Hashable, float] = OrderedDict()
        self._lock = threading.Lock()

    def rate(self, restriction: Hashable) -> float:
        with self._lock:
            return self._rates.get(restriction, FIRST_PASS_RATE)

    def observe(self, restriction: Hashable, asked: int, passed: int) -> None:
        """Record how many of `asked` candidates passed a restricted search's checks."""
        if asked <= 0:
            return
        seen = max(passed / asked, 1 / max(self.max_candidates, 1))
        with self._lock:
            old = self._rates.pop(restriction, None)
            rate = seen if old is None else PASS_RATE_WEIGHT * seen + (1 - PASS_RATE_WEIGHT) * old
            self._rates[restriction] = rate
            while len(self._rates) > PASS_RATES_KEPT:
                self._rates.popitem(last=False)

    def nearest(
        self,
        current: tuple[VectorIndex, str],
        vector: list[float],
        needed: int,
        restriction: Hashable | None,
        exact_below: float = 0,
        ef_search: int | None = None,
    ) -> Candidates:
        """The nearest ids in `current` (an index and its position) for a vector leg that
        keeps `needed` rows; no ids at all when the pass rate says the search sees no more
        vectors than the statement scans exactly (`exact_below`, grown with the square root
        of the size past 100k as in search.sql)."""
        index, position = current
        asked = needed
        if restriction is not None:
            rate = self.rate(restriction)
            if rate * index.live <= exact_below * math.sqrt(max(index.live, 100_000) / 100_000):
                return Candidates([], position, partial=True, asked=0)
            asked = min(max(needed, math.ceil(needed / rate * 1.2)), self.max_candidates)
        ids = index.search(np.asarray(vector, dtype=np.float32), asked, ef_search)
        return Candidates(ids.tolist(), position, partial=len(ids) < index.live, asked=asked)
