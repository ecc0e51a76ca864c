"""Database access: the server (embedded or configured), connections, schema and SQL files."""
