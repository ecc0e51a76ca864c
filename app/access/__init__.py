"""Who is calling and what they may do: API keys, tenant tokens, scopes, rate limits, audit.

Read in this order: `keys` (stored keys and their secrets), `caller` (what a request made
with a key may do), `tokens` (short-lived tokens a backend mints for its end users), `cache`
and `authenticate` (from an `Authorization` header to a `Caller`), `limits` (per-key rate
budgets) and `audit` (the log of security-relevant actions). The package sits beside
`app.db` and imports nothing above it: search, ingest, the API and the CLI consult it.
"""
