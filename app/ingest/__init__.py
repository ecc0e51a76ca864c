"""The write path: load → chunk → embed → store."""
