"""Dependencies shared by the handlers: the services of the process.

There is no per-request transaction dependency on purpose: a generator dependency's cleanup
(the commit) runs in the worker thread pool after the handler has returned its thread, so a
transaction holding row locks could wait for a thread that every other request, waiting on
those locks, holds. Handlers open their transaction with `services.transaction()` (or
`services.write()`), inside the thread that does the work.
"""

from __future__ import annotations

from litestar.datastructures import State

from app.service import Services


def provide_services(state: State) -> Services:
    services: Services = state.services
    return services
