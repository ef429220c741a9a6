"""Alembic migrations of the read model (run by `kiln migrate`, never by the services)."""
