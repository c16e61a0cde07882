"""Storage: the engine, the tables, one module of queries per table, and the Alembic migrations."""
