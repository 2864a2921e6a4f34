"""PostgreSQL: the migration runner and the project's named queries."""
