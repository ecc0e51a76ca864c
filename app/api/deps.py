"""Dependencies shared by the handlers: the services, and one transaction per request."""

from __future__ import annotations

from collections.abc import Iterator

from litestar.datastructures import State
from sqlalchemy import Connection

from app.service import Services


def provide_services(state: State) -> Services:
    services: Services = state.services
    return services


def provide_conn(state: State) -> Iterator[Connection]:
    """A transaction that commits when the handler returns and rolls back when it raises."""
    with provide_services(state).engine.begin() as conn:
        yield conn
