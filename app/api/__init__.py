"""The Litestar JSON API: a thin HTTP shell over the same services as the CLI."""
