"""The shared database: one adbapi pool for SQLite or MySQL/MariaDB (pool.py), the versioned
schema (schema.py, files under sql/), and the queries, one module per group of tables."""
