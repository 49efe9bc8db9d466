"""Serving: the REST API (:mod:`fracdet.serve.api`) on the one inference path, and the record of
every reading (:mod:`fracdet.serve.records`, SQLAlchemy 2 + Alembic; SQLite by default,
PostgreSQL by URL).  Sits between the faces (``fracdet serve``, ``fracdet records``) and the
work layer; needs the ``serve`` extra (``pip install 'fracdet[serve]'``)."""
