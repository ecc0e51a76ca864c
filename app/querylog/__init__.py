"""The query log: every search and answer recorded off the request path, feedback on them,
and the analytics read from the views of `sql/analytics.sql`."""
