"""Alembic migrations of the record database (applied by :func:`fracdet.serve.records.upgrade`)."""
