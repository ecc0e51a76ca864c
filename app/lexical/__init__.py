"""The in-process keyword index: exact BM25 top-k for the keyword leg."""
