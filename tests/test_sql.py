"""Every statement in sql/ parses into named statements with exactly the parameters the code
binds, and none formats input into SQL text."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from app.collections import Collection
from app.db.queries import SQL_DIR, load
from app.search.engine import _prepare_statement, _visible_ids, statement
from app.search.filters import CompiledFilter

EXPECTED = {
    ("write.sql", "existing_documents"): {"collection_id", "external_ids"},
    ("write.sql", "set_write_memory"): {"memory"},
    ("write.sql", "upsert_documents"): {
        "collection_id", "external_ids", "titles", "sources", "content_hashes", "metadata",
        "acls", "popularity", "published_at", "chunk_counts",
    },
    ("write.sql", "delete_chunks"): {"collection_id", "document_ids"},
    ("write.sql", "delete_sections"): {"collection_id", "document_ids"},
    ("write.sql", "log_inserted_chunks"): {"collection_id", "document_ids"},
    ("write.sql", "cached_embeddings"): {"model", "text_hashes"},
    ("documents.sql", "list_documents"): {
        "collection_id", "include_deleted", "limit", "offset", "principals", "title",
    },
    ("documents.sql", "count_documents"): {"collection_id", "principals", "title"},
    ("documents.sql", "metadata_keys"): {"collection_id", "principals"},
    ("documents.sql", "get_document"): {"collection_id", "external_id", "principals"},
    ("documents.sql", "lock_document"): {"collection_id", "external_id"},
    ("documents.sql", "document_chunks"): {"collection_id", "document_id"},
    ("documents.sql", "document_sections"): {"collection_id", "document_id"},
    ("documents.sql", "update_document_fields"): {
        "collection_id", "document_id", "metadata", "acl", "popularity", "published_at", "source",
    },
    ("documents.sql", "count_matching"): {"collection_id"},
    ("documents.sql", "soft_delete_matching"): {"collection_id", "limit"},
    ("documents.sql", "purge_document"): {"collection_id", "external_id"},
    ("documents.sql", "purge_deleted"): {"collection_id"},
    ("collections.sql", "create_collection"): {
        "name", "description", "embedding_model", "embedding_dim", "text_config", "settings",
    },
    ("search.sql", "prepare"): {
        "principals", "ef_search", "max_scan_tuples", "collection_id", "cache_position",
        "keyword_position", "generic_plan_below", "max_terms",
    },
    ("search.sql", "query_terms"): {"text_config", "query_text", "query_lexemes", "query_qtf"},
    ("search.sql", "prf"): {
        "chunk_ids", "collection_id", "expansion", "max_share", "query_text", "terms",
        "text_config",
    },
    ("lexical.sql", "postings"): {"collection_id", "ids"},
    ("lexical.sql", "changes"): {"collection_id", "position"},
    ("lexical.sql", "bm25"): {"collection_id"},
    ("search.sql", "visible"): {"principals"},
    ("search.sql", "visible_document"): {"collection_id"},
    ("search.sql", "visible_ids"): {"collection_id", "max_documents"},
    ("search.sql", "search"): {
        "collection_id", "max_terms", "keyword_budget", "k1", "b",
        "title_weight", "restricted", "query_vector", "keyword_depth", "keyword_fetch",
        "vector_depth", "vector_fetch", "exact_threshold", "vector_exact", "cached_ids",
        "cached_partial", "keyword_ids", "keyword_documents", "keyword_scores",
        "keyword_partial", "per_document", "keyword_weight",
        "vector_weight", "rarity_weight", "rrf_k", "fusion",
        "recency_half_life_days", "recency_floor", "recency_field", "popularity_weight",
        "popularity_max", "limit", "offset", "highlight", "headline_options",
    },
    ("collections.sql", "get_collection"): {"name"},
    ("collections.sql", "list_collections"): {"name"},
    ("collections.sql", "text_config_exists"): {"text_config"},
    ("collections.sql", "update_settings"): {"name", "settings"},
    ("collections.sql", "delete_collection"): {"name"},
    ("collections.sql", "lock_collection"): {"collection_id"},
    ("cache.sql", "collection_position"): {"name"},
    ("cache.sql", "settled"): {"lock_class", "collection_id", "snapshot"},
    ("answer.sql", "chunk_sections"): {"collection_id", "chunk_ids", "principals"},
    ("ann.sql", "collections"): set(),
    ("ann.sql", "snapshot"): set(),
    ("ann.sql", "pending"): {"collection_id", "position"},
    ("ann.sql", "changes"): {"collection_id", "position", "version"},
    ("indexes.sql", "vector_index_state"): {"collection_id", "next"},
    ("indexes.sql", "vector_index_ddl"): {"collection_id", "next"},
    ("indexes.sql", "drop_invalid_vector_index_ddl"): {"collection_id", "next"},
    ("indexes.sql", "drop_vector_index_ddl"): {"collection_id", "version"},
    ("indexes.sql", "vector_indexes"): {"collection_id"},
    ("indexes.sql", "try_build_lock"): {"lock_class", "collection_id"},
    ("indexes.sql", "release_build_lock"): {"lock_class", "collection_id"},
    ("indexes.sql", "set_build_memory"): {"memory"},
    ("indexes.sql", "analyze_loaded_tables"): set(),
    ("access.sql", "create_key"): {
        "name", "prefix", "secret_hash", "token_key", "principals", "scopes", "collections",
        "filter", "rate_per_minute", "answer_rate_per_minute", "description", "expires_at",
    },
    ("access.sql", "list_keys"): set(),
    ("access.sql", "find_key"): {"prefix"},
    ("access.sql", "lock_key_to_revoke"): {"ident"},
    ("access.sql", "revoke_key"): {"id"},
    ("access.sql", "touch_key"): {"id"},
    ("access.sql", "record_action"): {"action", "key_id", "target", "detail"},
    ("access.sql", "count_denied"): {"prefix", "reason"},
    ("query_log.sql", "salt"): set(),
    ("query_log.sql", "add_partitions"): {"first", "last"},
    ("query_log.sql", "drop_partitions"): {"cutoff"},
    ("query_log.sql", "find_search"): {"id"},
    ("query_log.sql", "record_feedback"): {
        "search_id", "searched_at", "collection", "kind", "chunk_id", "document_id", "position",
        "comment", "key_id",
    },
    ("query_log.sql", "report"): {"collection", "since"},
    ("query_log.sql", "latency"): {"collection", "since"},
    ("query_log.sql", "top_queries"): {"collection", "since", "limit"},
    ("query_log.sql", "zero_queries"): {"collection", "since", "limit"},
    ("jobs.sql", "create_job"): {
        "kind", "collection_id", "params", "key_id", "requested_by", "idempotency_key",
        "request_hash", "documents_total",
    },
    ("jobs.sql", "idempotent_job"): {"key_id", "idempotency_key"},
    ("jobs.sql", "add_file"): {"job_id", "position", "sha256", "name", "size"},
    ("jobs.sql", "lock_blob"): {"sha256"},
    ("jobs.sql", "enqueue"): {"job_id", "task"},
    ("jobs.sql", "get_job"): {"job_id", "key_id"},
    ("jobs.sql", "list_jobs"): {"key_id", "state", "collection", "limit", "offset"},
    ("jobs.sql", "job_failures"): {"job_id", "limit"},
    ("jobs.sql", "job_files"): {"job_id"},
    ("jobs.sql", "start_run"): {"job_id"},
    ("jobs.sql", "set_total"): {"job_id", "total"},
    ("jobs.sql", "recorded_documents"): {"job_id"},
    ("jobs.sql", "record_documents"): {
        "job_id", "external_ids", "statuses", "chunks", "hashes", "errors", "embedded",
    },
    ("jobs.sql", "record_file_failure"): {"job_id", "source", "error"},
    ("jobs.sql", "record_deleted"): {"job_id", "deleted"},
    ("jobs.sql", "cancel_requested"): {"job_id"},
    ("jobs.sql", "cancel_job"): {"job_id", "key_id"},
    ("jobs.sql", "finish_job"): {"job_id", "state", "error"},
    ("jobs.sql", "requeue_job"): {"job_id", "key_id"},
    ("jobs.sql", "note_retry"): {"job_id", "error"},
    ("jobs.sql", "unused_files"): {"job_id"},
    ("jobs.sql", "file_in_use"): {"sha256"},
    ("jobs.sql", "prune_jobs"): {"days"},
    ("jobs.sql", "unfinished_job"): {"collection_id", "kind"},
    ("jobs.sql", "job_outcomes"): {"job_id", "limit"},
    ("reembed.sql", "lock_collection"): {"collection_id"},
    ("reembed.sql", "set_next"): {"collection_id", "model", "dim"},
    ("reembed.sql", "chunk_counts"): {"collection_id"},
    ("reembed.sql", "chunks_to_embed"): {"collection_id", "after", "limit"},
    ("reembed.sql", "store_vectors"): {"collection_id", "ids", "vectors"},
    ("reembed.sql", "switch"): {"collection_id"},
    ("reembed.sql", "clear_vectors"): {"collection_id", "after", "limit"},
    ("reembed.sql", "get_collection"): {"collection_id"},
    ("reembed.sql", "job_progress"): {"job_id", "total", "done", "embedded"},
    ("query_log.sql", "feedback_daily"): {"collection", "since"},
    ("query_log.sql", "window"): {"collection", "since"},
    ("query_log.sql", "judged_queries"): {"collection", "since"},
    ("query_log.sql", "collection_corpus"): {"collection"},
    **{
        ("analytics.sql", view): set()
        for view in (
            "searches", "searches_daily", "queries_daily", "feedback", "clicks_daily",
            "answers_daily", "keys_daily",
        )
    },
}  # fmt: skip


def test_every_statement_is_listed() -> None:
    found = {(path.name, name) for path in SQL_DIR.glob("*.sql") for name in load(path.name)}
    assert found == set(EXPECTED)


@pytest.mark.parametrize(("filename", "name"), sorted(EXPECTED))
def test_statement_parameters(filename: str, name: str) -> None:
    statement = load(filename)[name]
    assert set(statement._bindparams) == EXPECTED[(filename, name)]
    assert "::" not in statement.text, "use CAST(:x AS type), not :x::type"


def test_the_search_statement_writes_out_every_mark() -> None:
    """The visibility rule and the filter reach every place sql/search.sql marks, in the form
    that place takes: a scan of the documents or the check of one."""
    collection = Collection(
        id=1, name="c", description="", embedding_model="m", embedding_dim=64,
        text_config="english", settings={}, created_at=datetime.now(UTC),
        vector_column="embedding_alt",
    )  # fmt: skip
    filters = CompiledFilter(sql="SCAN_FILTER", check_sql="CHECK_FILTER")
    written = statement(filters, collection).text
    assert "/* visible" not in written and "/* filter" not in written
    assert "/* document" not in written and "/* embedding" not in written
    assert "/* query terms" not in written
    # The collection's vectors, typed as its index is, wherever the vector leg reads them.
    assert written.count("CAST(c.embedding_alt AS vector(64))") == 4
    assert written.count("SCAN_FILTER") == 2 and written.count("CHECK_FILTER") == 5
    assert written.count("d.acl && CAST(:principals AS text[])") == 7
    # The collection's id is a constant of the statement.
    assert "CAST(1 AS bigint)" in written
    expected = EXPECTED[("search.sql", "search")] | EXPECTED[("search.sql", "query_terms")]
    assert set(text(written)._bindparams) == (expected | {"principals"}) - {"collection_id"}


def test_prepare_reads_the_same_query_terms_as_the_statement() -> None:
    """Both read the query's lexemes (or the expanded query's) from one fragment."""
    written = _prepare_statement().text
    assert "/* query terms" not in written
    expected = EXPECTED[("search.sql", "prepare")] | EXPECTED[("search.sql", "query_terms")]
    assert set(text(written)._bindparams) == expected


def test_the_visible_documents_query_writes_out_the_rule_and_the_filter() -> None:
    written = _visible_ids("SCAN_FILTER").text
    assert "/* visible" not in written and "/* filter" not in written
    assert "SCAN_FILTER" in written and "d.acl && CAST(:principals AS text[])" in written
    assert set(text(written)._bindparams) == {"collection_id", "principals", "max_documents"}


def test_the_search_statement_has_comments_only_on_lines_of_their_own() -> None:
    """The statement is sent without its comment lines: a comment after code would stay."""
    source = (SQL_DIR / "search.sql").read_text()
    for line in source.splitlines():
        code = line.strip()
        assert code.startswith("--") or "--" not in code, line
