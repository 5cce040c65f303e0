"""Storage for the ingest service: one small interface, two real backends.

:mod:`cloud_ingest.store.base` holds the interface (:class:`~cloud_ingest.store.base.Store`)
and the records it stores; :mod:`cloud_ingest.store.sqlite` (one file, the default) and
:mod:`cloud_ingest.store.postgres` (real fleets, many workers) implement it, each with
its own versioned migrations. Import the backend you use; nothing is imported here.
"""
