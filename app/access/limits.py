"""Per-key rate budgets: requests a minute, and a separate (lower) budget for answers.

Moving windows from the `limits` library, kept in this process's memory: each instance counts
on its own, so behind N instances a key may make up to N times its rate. A request spends
one unit of its key's request budget; an answer spends one of the answer budget as well. A
key without a rate has no limit. The API turns a `Decision` into `RateLimit-*` headers, and a
refusal into 429 with `Retry-After`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from limits import RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from app.access.caller import Caller
from app.errors import TooManyRequests

REQUEST = "request"
ANSWER = "answer"


@dataclass(frozen=True)
class Decision:
    """One budget after a request: allowed or not, its size, what is left, and the seconds
    until a unit is free again."""

    allowed: bool
    limit: int
    remaining: int
    reset_s: int

    def headers(self) -> dict[str, str]:
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_s),
        }
        return headers if self.allowed else {**headers, "Retry-After": str(self.reset_s)}

    def refusal(self) -> TooManyRequests:
        return TooManyRequests(
            f"rate limit of {self.limit} a minute reached; retry in {self.reset_s} s",
            retry_after=self.reset_s,
            rate_headers=self.headers(),
        )


class RateLimiter:
    """The budgets of every key, in this process."""

    def __init__(self) -> None:
        self._windows = MovingWindowRateLimiter(MemoryStorage())

    def hit(self, key_id: int, kind: str, per_minute: int) -> Decision:
        """Spend one unit of the key's `kind` budget of `per_minute`, if one is left."""
        item = RateLimitItemPerMinute(per_minute)
        allowed = self._windows.hit(item, str(key_id), kind)
        stats = self._windows.get_window_stats(item, str(key_id), kind)
        reset_s = max(1, math.ceil(stats.reset_time - time.time()))
        return Decision(allowed, per_minute, stats.remaining, reset_s)

    def admit(self, caller: Caller, kind: str = REQUEST) -> Decision | None:
        """Spend the caller's budgets for a request of `kind` (`request` or `answer`): the
        first refusal, else the decision with the least left; None when no budget applies."""
        if caller.key_id is None:
            return None
        decisions = []
        for budget, rate in _budgets(caller, kind):
            decision = self.hit(caller.key_id, budget, rate)
            if not decision.allowed:
                return decision
            decisions.append(decision)
        return min(decisions, key=lambda d: d.remaining, default=None)


def _budgets(caller: Caller, kind: str) -> list[tuple[str, int]]:
    rates = [(ANSWER, caller.answer_rate_per_minute)] if kind == ANSWER else []
    rates.append((REQUEST, caller.rate_per_minute))
    return [(budget, rate) for budget, rate in rates if rate is not None]
