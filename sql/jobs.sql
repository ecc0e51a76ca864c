-- Background jobs (app/jobs/): what people asked for, its progress, and the queue entry that
-- makes a worker run it. The queue is procrastinate's (its `procrastinate_*` functions);
-- `jobs` is the record people watch, written in the same transactions as the work itself.

-- name: create_job
-- A new job; with an idempotency key already used by the same key, nothing is inserted (the
-- caller reads the existing job instead).
INSERT INTO jobs (kind, collection_id, params, key_id, requested_by, idempotency_key,
                  request_hash, documents_total)
VALUES (:kind, :collection_id, CAST(:params AS jsonb), :key_id, :requested_by,
        :idempotency_key, :request_hash, :documents_total)
ON CONFLICT (COALESCE(key_id, 0), idempotency_key) WHERE idempotency_key IS NOT NULL
DO NOTHING
RETURNING id;

-- name: idempotent_job
SELECT id, request_hash FROM jobs
WHERE COALESCE(key_id, 0) = COALESCE(CAST(:key_id AS bigint), 0)
  AND idempotency_key = :idempotency_key;

-- name: add_file
INSERT INTO job_files (job_id, position, sha256, name, size)
VALUES (:job_id, :position, :sha256, :name, :size);

-- name: lock_blob
-- Held while a job takes a file and while a finished job's files are removed: a file is never
-- removed under a job that is taking it.
SELECT pg_advisory_xact_lock(hashtextextended('hybrid-blob:' || :sha256, 0));

-- name: enqueue
-- The queue entry that makes a worker run the job: one waiting entry per job at most (the
-- queueing lock), and one running at a time (the lock). Committed with the job, and its
-- NOTIFY wakes the workers at commit.
WITH queued AS (
    SELECT unnest(procrastinate_defer_jobs_v1(ARRAY[CAST(ROW(
        'jobs', :task, 0, 'job-' || CAST(:job_id AS text), 'job-' || CAST(:job_id AS text),
        jsonb_build_object('job_id', CAST(:job_id AS bigint)), NULL
    ) AS procrastinate_job_to_defer_v1)])) AS queue_job_id
)
UPDATE jobs SET queue_job_id = queued.queue_job_id, updated_at = now()
FROM queued
WHERE jobs.id = :job_id
RETURNING jobs.queue_job_id;

-- name: get_job
-- `:key_id` NULL: any job (admins); otherwise only the jobs that key asked for.
SELECT j.*, c.name AS collection
FROM jobs j JOIN collections c ON c.id = j.collection_id
WHERE j.id = :job_id
  AND (CAST(:key_id AS bigint) IS NULL OR j.key_id = :key_id);

-- name: list_jobs
-- Newest first; optionally one state and one collection.
SELECT j.*, c.name AS collection
FROM jobs j JOIN collections c ON c.id = j.collection_id
WHERE (CAST(:key_id AS bigint) IS NULL OR j.key_id = :key_id)
  AND (CAST(:state AS text) IS NULL OR j.state = :state)
  AND (CAST(:collection AS text) IS NULL OR c.name = :collection)
ORDER BY j.created_at DESC, j.id DESC
LIMIT :limit OFFSET :offset;

-- name: job_failures
SELECT external_id, source, error FROM job_documents
WHERE job_id = :job_id AND status = 'failed'
ORDER BY id
LIMIT :limit;

-- name: job_files
SELECT position, sha256, name, size FROM job_files WHERE job_id = :job_id ORDER BY position;

-- name: start_run
-- A worker takes the job (again, after a crash or a retry). Nothing to do when it was
-- cancelled meanwhile or already finished.
UPDATE jobs
SET state = 'running', attempts = attempts + 1, started_at = now(), updated_at = now(),
    error = NULL,
    done_before = CASE WHEN kind = 'reembed' THEN chunks
                       ELSE created + updated + metadata_updated + unchanged + failed + deleted
                  END
WHERE id = :job_id AND state IN ('queued', 'running') AND NOT cancel_requested
RETURNING id;

-- name: set_total
UPDATE jobs SET documents_total = :total, updated_at = now() WHERE id = :job_id;

-- name: recorded_documents
-- What this job has already written (a resumed run skips them).
SELECT external_id, content_hash FROM job_documents
WHERE job_id = :job_id AND external_id IS NOT NULL AND status <> 'failed';

-- name: record_documents
-- One batch's outcomes, in the batch's own transaction. A document this job already wrote
-- keeps its first outcome when the later one is `unchanged` (a resumed run writing it again);
-- a later different version of it (the same id twice in the input) replaces it. The counters
-- move by the difference.
WITH incoming AS (
    SELECT * FROM unnest(
        CAST(:external_ids AS text[]), CAST(:statuses AS text[]), CAST(:chunks AS integer[]),
        CAST(:hashes AS text[]), CAST(:errors AS text[])
    ) AS t (external_id, status, chunks, content_hash, error)
), previous AS (
    SELECT jd.external_id, jd.status, jd.chunks
    FROM job_documents jd JOIN incoming i USING (external_id)
    WHERE jd.job_id = :job_id
), written AS (
    INSERT INTO job_documents AS jd (job_id, external_id, status, chunks, content_hash, error)
    SELECT :job_id, external_id, status, chunks, content_hash, error FROM incoming
    ON CONFLICT (job_id, external_id) WHERE external_id IS NOT NULL
    DO UPDATE SET status = EXCLUDED.status, chunks = EXCLUDED.chunks,
                  content_hash = EXCLUDED.content_hash, error = EXCLUDED.error
    WHERE EXCLUDED.status <> 'unchanged' OR jd.status = 'failed'
    RETURNING jd.external_id, jd.status, jd.chunks
), replaced AS (
    SELECT p.status, p.chunks FROM previous p JOIN written w USING (external_id)
), delta AS (
    SELECT status, sum(n) AS n, sum(c) AS c FROM (
        SELECT status, 1 AS n, chunks AS c FROM written
        UNION ALL
        SELECT status, -1, -chunks FROM replaced
    ) moves
    GROUP BY status
)
UPDATE jobs SET
    created = created + COALESCE((SELECT n FROM delta WHERE status = 'created'), 0),
    updated = updated + COALESCE((SELECT n FROM delta WHERE status = 'updated'), 0),
    metadata_updated = metadata_updated
        + COALESCE((SELECT n FROM delta WHERE status = 'metadata_updated'), 0),
    unchanged = unchanged + COALESCE((SELECT n FROM delta WHERE status = 'unchanged'), 0),
    failed = failed + COALESCE((SELECT n FROM delta WHERE status = 'failed'), 0),
    chunks = chunks + COALESCE((SELECT sum(c) FROM delta), 0),
    embedded = embedded + :embedded,
    updated_at = now()
WHERE id = :job_id;

-- name: record_file_failure
-- A file that could not be read fails alone (once, however often the job runs).
WITH written AS (
    INSERT INTO job_documents (job_id, source, status, error)
    VALUES (:job_id, :source, 'failed', :error)
    ON CONFLICT (job_id, source) WHERE external_id IS NULL DO NOTHING
    RETURNING 1
)
UPDATE jobs SET failed = failed + (SELECT count(*) FROM written), updated_at = now()
WHERE id = :job_id;

-- name: record_deleted
UPDATE jobs SET deleted = deleted + :deleted, updated_at = now() WHERE id = :job_id;

-- name: cancel_requested
SELECT cancel_requested FROM jobs WHERE id = :job_id;

-- name: cancel_job
-- A queued job is cancelled at once (its queue entry too); a running one is asked to stop,
-- and stops at its next batch. Finished jobs are left as they are.
WITH job AS (
    UPDATE jobs
    SET cancel_requested = true, updated_at = now(),
        state = CASE WHEN state = 'queued' THEN 'cancelled' ELSE state END,
        finished_at = CASE WHEN state = 'queued' THEN now() ELSE finished_at END
    WHERE id = :job_id AND state IN ('queued', 'running')
      AND (CAST(:key_id AS bigint) IS NULL OR key_id = :key_id)
    RETURNING id, state, queue_job_id
)
SELECT job.id, job.state,
       CASE WHEN job.state = 'cancelled' AND job.queue_job_id IS NOT NULL
            THEN procrastinate_cancel_job_v1(job.queue_job_id, false, false) END AS dequeued
FROM job;

-- name: finish_job
UPDATE jobs
SET state = :state, error = :error, finished_at = now(), updated_at = now()
WHERE id = :job_id AND state IN ('queued', 'running')
RETURNING id;

-- name: requeue_job
-- A failed or cancelled job runs again from where it stopped.
UPDATE jobs
SET state = 'queued', error = NULL, cancel_requested = false, finished_at = NULL,
    updated_at = now()
WHERE id = :job_id AND state IN ('failed', 'cancelled')
  AND (CAST(:key_id AS bigint) IS NULL OR key_id = :key_id)
RETURNING id, kind;

-- name: note_retry
-- A run that stopped on a transient failure: queued again, with the reason, until the retry.
UPDATE jobs SET state = 'queued', error = :error, updated_at = now()
WHERE id = :job_id AND state = 'running';

-- name: unused_files
-- Files of `:job_id` that no unfinished job (nor a failed one, which may be retried) reads.
SELECT DISTINCT f.sha256 FROM job_files f
WHERE f.job_id = :job_id
  AND NOT EXISTS (
      SELECT 1 FROM job_files other JOIN jobs j ON j.id = other.job_id
      WHERE other.sha256 = f.sha256 AND j.state IN ('queued', 'running', 'failed')
  );

-- name: file_in_use
SELECT EXISTS (
    SELECT 1 FROM job_files f JOIN jobs j ON j.id = f.job_id
    WHERE f.sha256 = :sha256 AND j.state IN ('queued', 'running', 'failed')
);

-- name: prune_jobs
-- Finished jobs older than the retention; their per-document rows go with them.
DELETE FROM jobs
WHERE state IN ('done', 'failed', 'cancelled')
  AND finished_at < now() - make_interval(days => :days)
RETURNING id;

-- name: unfinished_job
-- A collection's queued or running job of a kind (re-embeddings: one at most).
SELECT id FROM jobs
WHERE collection_id = :collection_id AND kind = :kind AND state IN ('queued', 'running')
ORDER BY id
LIMIT 1;

-- name: job_outcomes
-- What became of each document (or unreadable file) a job took, in the order it wrote them.
SELECT external_id, source, status, chunks, error FROM job_documents
WHERE job_id = :job_id
ORDER BY id
LIMIT :limit;
