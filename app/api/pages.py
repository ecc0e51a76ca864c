"""The web pages: server-rendered HTML over the same service functions as the API.

Every page works before any script runs: a search is a GET form whose URL carries its state
(`/?collection=C&q=Q&mode=M&k=K&filter=F`), rendered by the server, so that it can be shared,
bookmarked and navigated with back and forward. The vendored htmx (`/static/htmx/`) only
swaps the results in place (with, out of band, the form's parts that follow them: the Field
list of the collection searched, the JSON filter box and its error) and pushes the URL.

Security, in one place for every page:
- the pages act as the caller the API would see: with `HYBRID_AUTH=required`, the API key a
  person signed in with, kept in an HttpOnly, SameSite=Strict cookie (`/login`), never in
  the URL or the page; the same scopes, allow-lists, principals and filters apply;
- every state-changing form carries a CSRF token that must equal its cookie (double submit);
- a strict Content-Security-Policy: scripts, styles and images from this origin only, no
  inline script or style, no framing;
- templates escape everything (Jinja2 autoescape); the only markup inserted as is, a hit's
  highlight, is escaped by the engine except for its `<mark>` tags.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from litestar import Controller, Request, Response, get, post
from litestar.datastructures import Cookie, UploadFile
from litestar.enums import RequestEncodingType
from litestar.params import Body
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, Template
from litestar.template.config import TemplateConfig
from markupsafe import Markup, escape
from sqlalchemy import Connection

from app import collections, documents
from app.access import audit
from app.access.caller import (
    ADMIN,
    INGEST,
    SEARCH,
    Caller,
    may_use_collection,
    require_collection,
    require_scope,
)
from app.access.limits import ANSWER, REQUEST
from app.api.auth import Gate
from app.api.routes.answer import run as answer_run
from app.api.routes.documents import external_id_of
from app.api.routes.documents import visibility as document_visibility
from app.api.routes.search import run as search_run
from app.api.schemas import AnswerIn, SearchOut
from app.documents import parse_metadata
from app.errors import Forbidden, HybridError, Invalid, Unauthorized
from app.ingest import load, vector_index
from app.jobs import records
from app.jobs.blobs import BlobStore
from app.jobs.submit import submit
from app.querylog import analytics, feedback
from app.search.request import (
    MODES,
    Boosts,
    PopularityBoost,
    RecencyBoost,
    SearchRequest,
)
from app.service import Services

TEMPLATES = Path(__file__).resolve().parent / "templates"
STATIC = Path(__file__).resolve().parent / "static"
KEY_COOKIE = "hybrid_key"
CSRF_COOKIE = "hybrid_csrf"
CSRF_FIELD = "_csrf"
SESSION_S = 12 * 3600
# A page authenticates its viewer itself (`page_caller`); a page's form is read as a form
# (app/api/edge.py), and its CSRF token checked.
PAGE_ROUTE = {"page": True}
FORM_ROUTE = {"page": True, "form": True}
UPLOAD_ROUTE = {"page": True, "upload": True}
MAX_K = 50
DOCUMENTS_PAGE = 50
MAX_OFFSET = 2**31 - 1
# What the evaluation page shows of each mode of a `hybrid eval` report.
EVAL_FIELDS = (
    "ndcg_10", "recall_100", "mrr_10", "hit_5", "latency_p50_ms", "latency_p95_ms",
)  # fmt: skip
# ... and of its answers (`hybrid eval --answers`; older reports have none): means (None when
# defined for no answer), then counts.
EVAL_ANSWER_MEANS = ("citation_precision", "citation_recall", "support")
EVAL_ANSWER_COUNTS = (
    "queries", "answered", "failed", "judged", "judge_unparseable", "judge_failed",
)  # fmt: skip
CHART_WIDTH, CHART_HEIGHT = 600, 160
CITATION = re.compile(r"\[(\d{1,3})\]")
SUGGESTED_QUERY = "how does hybrid search rank results"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    # A page and its htmx part share a URL.
    "Vary": "HX-Request",
}


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    def configure(engine: JinjaTemplateEngine) -> None:
        engine.engine.globals["asset"] = _asset
        # One path segment, every reserved character encoded ('/' too: ids may hold it).
        engine.engine.filters["segment"] = lambda value: quote(str(value), safe="")

    return TemplateConfig(
        directory=TEMPLATES, engine=JinjaTemplateEngine, engine_callback=configure
    )


@functools.cache
def _asset(path: str) -> str:
    """A static file's URL with its content's hash: cached for good, replaced when it
    changes."""
    digest = hashlib.sha256((STATIC / path).read_bytes()).hexdigest()[:12]
    return f"/static/{path}?v={digest}"


@dataclass
class PageUpload:
    """The upload form: the collection, its files, and the form's CSRF token."""

    collection: str = ""
    files: list[UploadFile] = field(default_factory=list)
    csrf: str = ""


@dataclass(frozen=True)
class Form:
    """The search form's state, as its URL carries it."""

    collection: str = ""
    q: str = ""
    mode: str = ""
    k: int = 10
    filter: str = ""
    # The filter builder: one metadata key and the value it must equal (joined to `filter`).
    key: str = ""
    value: str = ""
    per_document: bool = False
    # Boosts, as typed (an empty box: none): newer documents first (a half-life in days),
    # popular ones (a weight).
    recency: str = ""
    popularity: str = ""


def _reranks(services: Services) -> bool:
    status = services.reranker_status
    return status is not None and status.available


def _search(
    services: Services, caller: Caller, form: Form
) -> tuple[SearchOut | None, HybridError | None]:
    try:
        parsed = parse_metadata(form.filter, name="filter") if form.filter.strip() else None
        if form.key:
            picked = {f"metadata.{form.key}": _scalar(form.value)}
            parsed = {"and": [parsed, picked]} if parsed else picked
        recency, popularity = (
            _number(form.recency, "recency"),
            _number(form.popularity, "popularity"),
        )
        boosts = Boosts(
            recency=RecencyBoost(recency) if recency else None,
            popularity=PopularityBoost(popularity) if popularity else None,
        )
        asked = SearchRequest(
            query=form.q, mode=form.mode or None, k=form.k, filter=parsed, explain=True,
            per_document=form.per_document, boosts=boosts,
        )  # fmt: skip
        return search_run(services, caller, form.collection, asked), None
    except HybridError as exc:
        return None, exc


def _scalar(text: str) -> Any:
    """A value typed into the filter builder: a JSON number, boolean or null when it reads as
    one (metadata compares values of the same JSON type), else the text itself; empty: the
    key must exist."""
    if not text.strip():
        return {"exists": True}
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, int | float | bool) or value is None else text


def _number(text: str, name: str) -> float | None:
    """A number box of the form: empty is none."""
    if not text.strip():
        return None
    try:
        return float(text)
    except ValueError:
        raise Invalid(f"{name}: expected a number, got {text!r}", field=name) from None


def _filter_problem(form: Form, problem: HybridError | None) -> HybridError | None:
    """The refusal to show beside the raw JSON filter box: one about the filter typed there."""
    if problem is None or not form.filter.strip() or not problem.field:
        return None
    return problem if problem.field.split(".")[0] == "filter" else None


def _metadata_keys(conn: Connection, caller: Caller, name: str) -> list[str]:
    """The collection's metadata keys the viewer's documents have (for the filter builder)."""
    try:
        collection = collections.get(conn, name)
    except HybridError:
        return []
    return documents.metadata_keys(conn, collection.id, document_visibility(caller))


def _hit(hit: Any) -> dict[str, Any]:
    return {
        "hit": hit,
        # Escaped by the engine but for its <mark> tags (app/search/engine.py `highlight`).
        "highlight": Markup(hit.highlight),
        "metadata": json.dumps(hit.metadata, ensure_ascii=False, sort_keys=True),
    }


def _cited(text: str, sources: int) -> Markup:
    """The answer's text, escaped, with each citation [n] a link to its source."""

    def link(found: re.Match[str]) -> str:
        number = int(found[1])
        if not 1 <= number <= sources:
            return found[0]
        return f'<a href="#source-{number}" class="cite">[{number}]</a>'

    return Markup(CITATION.sub(link, str(escape(text))))


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str
    value: str


@dataclass(frozen=True)
class Chart:
    """A bar chart drawn as SVG by the template (no script, no inline style)."""

    title: str
    bars: list[Bar]
    top: str
    width: int = CHART_WIDTH
    height: int = CHART_HEIGHT


def chart(title: str, labels: list[str], values: list[float], fmt: str) -> Chart:
    """Bars of `values` scaled to the chart's height, each with its label and its value."""
    highest = max((float(v) for v in values), default=0.0) or 1.0
    step = CHART_WIDTH / max(len(values), 1)
    bars = []
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        height = (CHART_HEIGHT - 20) * float(value) / highest
        bars.append(
            Bar(
                x=round(i * step + step * 0.1, 1),
                y=round(CHART_HEIGHT - 20 - height, 1),
                width=round(step * 0.8, 1),
                height=round(height, 1),
                label=label,
                value=fmt.format(float(value)),
            )
        )
    return Chart(title, bars, fmt.format(highest))


def _eval_answers(found: Any) -> dict[str, Any] | None:
    """What the evaluation page shows of a report's answers; None for a report without."""
    if found is None:
        return None
    means = {key: None if found[key] is None else float(found[key]) for key in EVAL_ANSWER_MEANS}
    return means | {key: int(found[key]) for key in EVAL_ANSWER_COUNTS}


def _partial(request: Request[Any, Any, Any]) -> bool:
    """An htmx request for a part of the page (a history restore wants the whole page)."""
    headers = request.headers
    return bool(headers.get("hx-request")) and not headers.get("hx-history-restore-request")


def _allowed(conn: Connection, caller: Caller) -> list[str]:
    """The names of the collections the viewer's key may use."""
    return [c.name for c in collections.list_all(conn) if may_use_collection(caller, c.name)]


def _frame(caller: Caller) -> dict[str, Any]:
    """What every page's frame shows."""
    return {"signed_in": caller.key_id is not None, "caller": caller.describe()}


def page_caller(
    request: Request[Any, Any, Any], services: Services, budget: str = REQUEST
) -> Caller | None:
    """Who is looking at a page: anyone when authentication is off; else the key it signed in
    with (None: not signed in, or the key no longer works). A page spends the key's rate
    budget (`budget`: requests, or answers) as the API does: over it, 429."""
    key = request.cookies.get(KEY_COOKIE)
    if _required(services) and not key:
        return None
    gate = _gate(request)
    try:
        caller = gate.authenticator.authenticate(
            f"Bearer {key}" if key else None, services.transaction
        )
    except Unauthorized:
        return None
    decision = gate.limiter.admit(caller, budget)
    if decision is not None and not decision.allowed:
        raise decision.refusal()
    return caller


def _gate(request: Request[Any, Any, Any]) -> Gate:
    gate: Gate = request.app.state.gate
    return gate


def _required(services: Services) -> bool:
    return services.settings.server.auth == "required"


def page(
    request: Request[Any, Any, Any],
    name: str,
    context: dict[str, Any],
    *,
    status_code: int = 200,
) -> Response[Any]:
    """A page with the security headers, and the CSRF token its forms carry (its cookie set
    when the browser has none yet)."""
    token = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(32)
    response = Template(
        template_name=name,
        context={**context, "csrf_field": CSRF_FIELD, "csrf_token": token},
        headers=SECURITY_HEADERS,
        status_code=status_code,
        media_type="text/html",
    )
    if request.cookies.get(CSRF_COOKIE) != token:
        _set_csrf(response, request, _services(request), token)
    return response


def _set_csrf(
    response: Response[Any], request: Request[Any, Any, Any], services: Services, token: str
) -> None:
    # Lax: a link followed from elsewhere keeps the token the open forms carry (it is no
    # credential; the key's cookie is the Strict one).
    response.cookies.append(
        Cookie(
            key=CSRF_COOKIE,
            value=token,
            httponly=True,
            samesite="lax",
            path="/",
            secure=_secure(request, services),
        )
    )


def _secure(request: Request[Any, Any, Any], services: Services) -> bool:
    return request.url.scheme == "https" or services.settings.server.secure_cookies


def _services(request: Request[Any, Any, Any]) -> Services:
    services: Services = request.app.state.services
    return services


def _local_path(value: str | None) -> str | None:
    """A path on this site to go back to after signing in (never another site's URL)."""
    if not value or not value.startswith("/") or value.startswith(("//", "/\\")):
        return None
    return value if "\\" not in value and len(value) <= 4000 else None


def to_login(request: Request[Any, Any, Any]) -> Response[Any]:
    """To the sign-in page, and back here after it (an htmx request is told to go there
    whole, not to put the sign-in page in its part)."""
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    target = f"/login?{urlencode({'next': here})}"
    if request.headers.get("hx-request"):
        return Response(b"", status_code=200, headers={"HX-Redirect": target})
    return Redirect(target, status_code=303)


def _first_page(caller: Caller) -> str:
    """Where a key lands after signing in: the first page its scopes open."""
    if SEARCH in caller.scopes:
        return "/"
    return "/ingest" if INGEST in caller.scopes else "/collections"


def check_csrf(request: Request[Any, Any, Any], data: dict[str, str]) -> None:
    """A state-changing form must carry the token of its cookie: another site can make the
    browser send the cookie, but cannot read it to put it in the form."""
    cookie = request.cookies.get(CSRF_COOKIE, "")
    sent = data.get(CSRF_FIELD, "")
    if not cookie or not hmac.compare_digest(cookie.encode(), sent.encode()):
        raise Forbidden(
            f"{CSRF_FIELD}: missing or not this browser's form token; reload the page",
            field=CSRF_FIELD,
        )


def problem_page(request: Request[Any, Any, Any], exc: HybridError) -> Response[Any]:
    """A refusal on a page, as a page (the API answers problems as JSON): its status, its
    reason and field; only the part when htmx asked for one."""
    name = "_problem.html" if _partial(request) else "problem.html"
    response = page(request, name, {"problem": exc}, status_code=exc.status)
    response.headers.update(exc.headers())
    return response


class Pages(Controller):
    """Every page (a controller, so that each application gets its own handlers)."""

    path = "/"
    include_in_schema = False
    exception_handlers = {HybridError: problem_page}

    @get("/", include_in_schema=False, sync_to_thread=True, opt=PAGE_ROUTE)
    def search_page(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        collection: str = "",
        q: str = "",
        mode: str = "",
        k: int = 10,
        filter: str = "",
        key: str = "",
        value: str = "",
        per_document: bool = False,
        recency: str = "",
        popularity: str = "",
    ) -> Response[Any]:
        """The search page; with `HX-Request`, only its results."""
        caller = page_caller(request, services)
        if caller is None:
            return to_login(request)
        require_scope(caller, SEARCH)
        with services.transaction() as conn:
            names = _allowed(conn, caller)
            chosen = collection or (names[0] if names else "")
            keys = _metadata_keys(conn, caller, chosen) if chosen in names else []
        k = max(1, min(k, MAX_K))
        form = Form(chosen, q, mode, k, filter, key, value, per_document, recency, popularity)
        result, problem = (
            _search(services, caller, form) if form.q and form.collection else (None, None)
        )
        context = {
            "form": form,
            "collections": names,
            "modes": [m for m in MODES if m != "hybrid+rerank" or _reranks(services)],
            "result": result,
            "problem": problem,
            "filter_problem": _filter_problem(form, problem),
            # The key searched with stays listed, so that the form shows what was searched.
            "keys": keys if not key or key in keys else [*keys, key],
            "hits": [_hit(h) for h in result.hits] if result else [],
            "suggested": SUGGESTED_QUERY,
            **_frame(caller),
        }
        name = "_search.html" if _partial(request) else "search.html"
        return page(request, name, context)

    @get("/collections", include_in_schema=False, sync_to_thread=True, opt=PAGE_ROUTE)
    def collections_page(
        self, request: Request[Any, Any, Any], services: Services
    ) -> Response[Any]:
        """Every collection the viewer may use: counts (for admins), model, vector version and
        index state, search settings."""
        caller = page_caller(request, services)
        if caller is None:
            return to_login(request)
        require_scope(caller, SEARCH)
        with services.transaction() as conn:
            found = [c for c in collections.list_all(conn) if may_use_collection(caller, c.name)]
            built = {c.id: vector_index.is_built(conn, c.id) for c in found}
        cache = {}
        if services.vector_cache is not None and services.vector_cache.started:
            cache = {row["collection"]: row for row in services.vector_cache.status()}
        rows = [
            {
                "collection": c,
                "counts": ADMIN in caller.scopes,
                "hnsw": built[c.id],
                "faiss": cache.get(c.name),
                "settings": collections.collection_defaults(c.settings),
            }
            for c in found
        ]
        chunking = services.settings.chunking
        context = _frame(caller) | {"rows": rows, "chunking": chunking}
        return page(request, "collections.html", context)

    @get("/collections/{name:str}/documents", include_in_schema=False, sync_to_thread=True,
         opt=PAGE_ROUTE)  # fmt: skip
    def documents_page(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        name: str,
        title: str = "",
        offset: int = 0,
    ) -> Response[Any]:
        """A collection's documents the viewer may see, newest first, 50 a page; `title` narrows
        them to titles containing it (typed into the page's box, results as one types)."""
        caller = page_caller(request, services)
        if caller is None:
            return to_login(request)
        require_scope(caller, SEARCH)
        require_collection(caller, name)
        offset = max(0, min(offset, MAX_OFFSET))
        with services.transaction() as conn:
            collection = collections.get(conn, name)
            rows, counts = documents.list_page(
                conn, collection.id, limit=DOCUMENTS_PAGE, offset=offset, include_deleted=False,
                visibility=document_visibility(caller), title=title or None,
            )  # fmt: skip
        context = _frame(caller) | {
            "collection": collection.name,
            "title": title,
            "documents": rows,
            "total": counts["live"],
            "offset": offset,
            "page_size": DOCUMENTS_PAGE,
        }
        name_ = "_documents.html" if _partial(request) else "documents.html"
        return page(request, name_, context)

    @get("/collections/{name:str}/documents/{external_id:path}", include_in_schema=False,
         sync_to_thread=True, opt=PAGE_ROUTE)  # fmt: skip
    def document_page(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        name: str,
        external_id: str,
        confirm: str = "",
    ) -> Response[Any]:
        """One document: its fields, metadata, ACL, version, sections and chunks; for keys that
        may delete, a link to `?confirm=delete`, the page that asks before deleting."""
        caller = page_caller(request, services)
        if caller is None:
            return to_login(request)
        require_scope(caller, SEARCH)
        require_collection(caller, name)
        if confirm not in ("", "delete"):
            raise Invalid(f"confirm: expected delete, got {confirm!r}", field="confirm")
        if confirm:
            require_scope(caller, INGEST)
        key = external_id_of(request)
        with services.transaction() as conn:
            collection = collections.get(conn, name)
            row = documents.get(
                conn,
                collection.id,
                key,
                include_deleted=False,
                visibility=document_visibility(caller),
            )
            sections = documents.sections_of(conn, collection.id, row["id"])
            chunks = documents.chunks_of(conn, collection.id, row["id"])
        context = _frame(caller) | {
            "collection": collection.name,
            "document": row,
            "metadata": json.dumps(row["metadata"], ensure_ascii=False, indent=2, sort_keys=True),
            "sections": sections,
            "chunks": chunks,
            "may_delete": INGEST in caller.scopes,
        }
        return page(request, "delete.html" if confirm else "document.html", context)

    @post("/collections/{name:str}/documents/{external_id:path}", include_in_schema=False,
          sync_to_thread=True, status_code=303, opt=FORM_ROUTE)  # fmt: skip
    def delete_document_form(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        name: str,
        external_id: str,
        data: Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)],
    ) -> Response[Any]:
        """The delete confirmation's form (a soft delete, as `DELETE` on the API)."""
        check_csrf(request, data)
        caller = page_caller(request, services)
        if caller is None:
            return to_login(request)
        require_scope(caller, INGEST)
        require_collection(caller, name)
        if data.get("action") != "delete":
            raise Invalid("action: expected delete", field="action")
        key = external_id_of(request)

        def work(conn: Connection) -> None:
            collection = collections.get(conn, name)
            # Only a document the viewer can see (its principals, its key's filter).
            documents.get(conn, collection.id, key, visibility=document_visibility(caller))
            documents.soft_delete(conn, collection.id, key)
            audit.record(conn, audit.DOCUMENT_DELETED, caller, f"{name}/{key}", {"purge": False})

        services.write(work)
        return Redirect(f"/collections/{quote(name)}/documents", status_code=303)

    @get("/answer", include_in_schema=False, sync_to_thread=True, opt=PAGE_ROUTE)
    def answer_page(
        self, request: Request[Any, Any, Any], services: Services, collection: str = "", q: str = ""
    ) -> Response[Any]:
        """Ask a question: the answer, its numbered citations and the passages cited. Without
        scripts the page is rendered whole; with them it streams (`/answer/stream`)."""
        caller = page_caller(request, services, ANSWER if q else REQUEST)
        if caller is None:
            return to_login(request)
        require_scope(caller, SEARCH)
        with services.transaction() as conn:
            names = _allowed(conn, caller)
        form = Form(collection or (names[0] if names else ""), q)
        answer, problem = None, None
        if form.q and form.collection:
            try:
                response = answer_run(services, caller, AnswerIn(form.collection, query=form.q))
                answer = response.content
            except HybridError as exc:
                problem = exc
        context = _frame(caller) | {
            "form": form,
            "collections": names,
            "answer": answer,
            "answer_html": _cited(answer.answer, len(answer.sources)) if answer else None,
            "problem": problem,
        }
        return page(request, "answer.html", context)

    @get("/answer/stream", include_in_schema=False, sync_to_thread=True, opt=PAGE_ROUTE)
    def answer_stream(
        self, request: Request[Any, Any, Any], services: Services, collection: str, q: str
    ) -> Response[Any]:
        """The answer page's stream: server-sent events as `POST /v1/answer` sends them."""
        caller = page_caller(request, services, ANSWER)
        if caller is None:
            raise Unauthorized("sign in first", reason="missing")
        require_scope(caller, SEARCH)
        return answer_run(services, caller, AnswerIn(collection, query=q, stream=True))

    @post("/answer/feedback", include_in_schema=False, sync_to_thread=True, opt=FORM_ROUTE)
    def answer_feedback(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        data: Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)],
    ) -> Response[Any]:
        """Thumbs up or down for an answer (`POST /v1/feedback`, for the viewer's key)."""
        check_csrf(request, data)
        caller = page_caller(request, services)
        if caller is None:
            return to_login(request)
        require_scope(caller, SEARCH)
        kind = data.get("kind", "")
        if kind not in ("thumbs_up", "thumbs_down"):
            raise Invalid("kind: expected thumbs_up or thumbs_down", field="kind")
        given = feedback.Feedback(search_id=data.get("search_id", ""), kind=kind)
        services.write(
            lambda conn: feedback.record(
                conn,
                services.query_log,
                given,
                caller.key_id,
                admin=ADMIN in caller.scopes,
                subject=caller.subject,
            )
        )
        thanks = "Thanks: noted." if kind == "thumbs_up" else "Thanks: noted, we will look."
        return page(request, "_thanks.html", _frame(caller) | {"message": thanks})

    @get("/ingest", include_in_schema=False, sync_to_thread=True, opt=PAGE_ROUTE)
    def ingest_page(
        self, request: Request[Any, Any, Any], services: Services, collection: str = ""
    ) -> Response[Any]:
        """Upload files into a collection (as many as wanted, dropped or picked)."""
        caller = page_caller(request, services)
        if caller is None:
            return to_login(request)
        require_scope(caller, INGEST)
        with services.transaction() as conn:
            names = _allowed(conn, caller)
        context = _frame(caller) | {
            "collections": names,
            "collection": collection or (names[0] if names else ""),
            "suffixes": ", ".join(sorted(load.SUPPORTED_SUFFIXES)),
            "max_mb": services.settings.ingest.max_upload_bytes // (1 << 20),
        }
        return page(request, "ingest.html", context)

    @post("/ingest", include_in_schema=False, sync_to_thread=True, status_code=303,
          opt=UPLOAD_ROUTE)  # fmt: skip
    def ingest_upload(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        data: Annotated[PageUpload, Body(media_type=RequestEncodingType.MULTI_PART)],
    ) -> Response[Any]:
        """The upload form: the files queued as an ingest job, then its page."""
        check_csrf(request, {CSRF_FIELD: data.csrf})
        caller = page_caller(request, services)
        if caller is None:
            return to_login(request)
        require_scope(caller, INGEST)
        require_collection(caller, data.collection)
        if not data.files:
            raise Invalid("files: choose at least one file", field="files")
        with services.transaction() as conn:
            collection = collections.get(conn, data.collection)
        limit = services.settings.ingest.max_upload_bytes
        uploads = ((upload.filename or "upload", upload.file) for upload in data.files)
        staged = BlobStore.of(services.settings).stage_files(uploads, limit)
        job = submit(
            services, kind=records.INGEST, collection_id=collection.id,
            params={"metadata": {}, "acl": None}, key_id=caller.key_id,
            requested_by=caller.describe(), files=staged,
        )  # fmt: skip
        return Redirect(f"/jobs/{job.id}", status_code=303)

    @get("/jobs/{job_id:int}", include_in_schema=False, sync_to_thread=True, opt=PAGE_ROUTE)
    def job_page(
        self, request: Request[Any, Any, Any], services: Services, job_id: int
    ) -> Response[Any]:
        """A job's progress (the page looks again every second until it ends) and what became
        of each document."""
        caller = page_caller(request, services)
        if caller is None:
            return to_login(request)
        require_scope(caller, INGEST)
        owner = None if ADMIN in caller.scopes else caller.key_id
        with services.transaction() as conn:
            job = records.get(conn, job_id, owner)
            outcomes = records.outcomes(conn, job_id)
        done, total = job.progress
        context = _frame(caller) | {
            "job": job,
            "done": done,
            "total": total,
            "eta": job.eta_s(),
            "outcomes": outcomes,
        }
        name = "_job.html" if _partial(request) else "job.html"
        return page(request, name, context)

    @get("/analytics", include_in_schema=False, sync_to_thread=True, opt=PAGE_ROUTE)
    def analytics_page(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        collection: str = "",
        days: int = 30,
    ) -> Response[Any]:
        """How search is used (admins): daily searches, p95 latency and zero-result rate as
        charts, the top queries and those that found nothing."""
        caller = page_caller(request, services)
        if caller is None:
            return to_login(request)
        require_scope(caller, ADMIN)
        days = max(1, min(days, 366))
        window = {"collection": collection or None, "since": analytics.since(days)}
        report = analytics.rows(services.engine, "report", **window)
        top = analytics.rows(services.engine, "top_queries", **window, limit=20)
        zero = analytics.rows(services.engine, "zero_queries", **window, limit=20)
        with services.transaction() as conn:
            names = [c.name for c in collections.list_all(conn)]
        days_shown = [str(r["day"])[5:] for r in report]
        charts = [
            chart("Searches a day", days_shown, [r["requests"] for r in report], "{:.0f}"),
            chart("p95 latency, ms", days_shown, [r["p95_ms"] or 0 for r in report], "{:.1f}"),
            chart("Zero-result rate", days_shown, [r["zero_rate"] or 0 for r in report], "{:.1%}"),
        ]
        context = _frame(caller) | {
            "collection": collection,
            "collections": names,
            "days": days,
            "report": report,
            "charts": charts,
            "top": top,
            "zero": zero,
        }
        return page(request, "analytics.html", context)

    @get("/evaluation", include_in_schema=False, sync_to_thread=True, opt=PAGE_ROUTE)
    def evaluation_page(self, request: Request[Any, Any, Any], services: Services) -> Response[Any]:
        """The reports `hybrid eval` wrote (admins): per set, each mode's quality and latency,
        as a table and a chart of nDCG@10."""
        caller = page_caller(request, services)
        if caller is None:
            return to_login(request)
        require_scope(caller, ADMIN)
        folder = services.settings.server.eval_reports
        reports = []
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            try:
                report = json.loads(path.read_text())
                modes = [
                    {"mode": str(m["mode"])} | {field: float(m[field]) for field in EVAL_FIELDS}
                    for m in report["modes"]
                ]
                about = {key: report[key] for key in ("dataset", "queries", "documents", "k")}
                about["answers"] = _eval_answers(report.get("answers"))
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                continue  # not a report of `hybrid eval`
            labels = [str(m["mode"]) for m in modes]
            ndcg = [float(m["ndcg_10"]) for m in modes]
            about |= {"modes": modes, "vector_backend": report.get("vector_backend")}
            reports.append({"report": about, "chart": chart("nDCG@10", labels, ndcg, "{:.3f}")})
        context = _frame(caller) | {"reports": reports, "folder": str(folder)}
        return page(request, "evaluation.html", context)

    @get("/login", include_in_schema=False, sync_to_thread=False, opt=PAGE_ROUTE)
    def login_page(
        self, request: Request[Any, Any, Any], services: Services, next: str = ""
    ) -> Response[Any]:
        context = {"problem": None, "required": _required(services), "next": _local_path(next)}
        return page(request, "login.html", context)

    @post("/login", include_in_schema=False, sync_to_thread=True, status_code=303, opt=FORM_ROUTE)
    def login(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        data: Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)],
    ) -> Response[Any]:
        """Sign in with an API key: checked as the API checks it, then kept in a cookie."""
        check_csrf(request, data)
        key = data.get("key", "").strip()
        try:
            caller = _gate(request).authenticator.authenticate(
                f"Bearer {key}", services.transaction
            )
        except HybridError as exc:
            context = {"problem": exc, "required": _required(services), "next": data.get("next")}
            return page(request, "login.html", context, status_code=401)
        landing = _local_path(data.get("next")) or _first_page(caller)
        response = Redirect(landing, status_code=303)
        response.set_cookie(
            KEY_COOKIE, key, max_age=SESSION_S, httponly=True, samesite="strict",
            secure=_secure(request, services),
        )  # fmt: skip
        # A new form token with each sign-in.
        _set_csrf(response, request, services, secrets.token_urlsafe(32))
        return response

    @post("/logout", include_in_schema=False, sync_to_thread=False, status_code=303, opt=FORM_ROUTE)
    def logout(
        self,
        request: Request[Any, Any, Any],
        data: Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)],
    ) -> Response[Any]:
        check_csrf(request, data)
        response = Redirect("/login", status_code=303)
        response.delete_cookie(KEY_COOKIE)
        return response
