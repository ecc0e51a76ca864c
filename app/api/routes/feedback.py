"""Feedback: `POST /v1/feedback`, a click or rating of a logged search's hit, or thumbs for an
answer, checked against what that search returned (see `app.querylog.feedback`)."""

from __future__ import annotations

import msgspec
from litestar import post

from app.access.caller import ADMIN, SEARCH, Caller
from app.api.schemas import FeedbackIn, FeedbackOut
from app.querylog import feedback
from app.service import Services


@post("/v1/feedback", sync_to_thread=True, status_code=201, tags=["search"], opt={"scope": SEARCH})
def feedback_post(data: FeedbackIn, services: Services, caller: Caller) -> FeedbackOut:
    """Record a click (`click`), a rating of a hit (`helpful`, `not_helpful`) or of an answer
    (`thumbs_up`, `thumbs_down`) with an optional comment, for a search made with this key."""
    given = feedback.Feedback(**msgspec.structs.asdict(data))
    stored = services.write(
        lambda conn: feedback.record(
            conn,
            services.query_log,
            given,
            caller.key_id,
            admin=ADMIN in caller.scopes,
            subject=caller.subject,
        )
    )
    return FeedbackOut(**stored)
