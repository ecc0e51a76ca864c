"""Background jobs on a PostgreSQL queue: ingest and delete by filter, run by workers.

`records` is the `jobs` table people watch, `blobs` the uploaded files waiting for their job,
`run` what a worker does with a job, `queue` the procrastinate queue and the workers.
"""
