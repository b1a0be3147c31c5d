"""The store's schema migrations (alembic): :func:`cloud.store.migrate` runs them at every start.

One revision per schema change in ``versions/``, named ``NNNN_what.py``; the newest must produce
exactly the tables of :mod:`cloud.store` (``tests/cloud/test_migrations.py`` compares them on SQLite
and PostgreSQL). ``0001`` is the schema every store had before migrations existed: a store without
alembic's version table is stamped with it, then upgraded.
"""
