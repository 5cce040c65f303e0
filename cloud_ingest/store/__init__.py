"""Storage for the ingest service: one small interface, two real backends.

:mod:`cloud_ingest.store.base` holds the interface (:class:`~cloud_ingest.store.base.Store`)
and the rows it stores (each holding the van's contract record); :mod:`.plan` is the one
write plan every backend runs (no I/O: what to insert, duplicates, POD links, ranges,
acks, stream messages); :mod:`cloud_ingest.store.sqlite` (one file, the default) and
:mod:`cloud_ingest.store.postgres` (real fleets, many workers) answer its operations in
SQL and implement the reads, each with its own versioned migrations. Import the backend
you use; nothing is imported here.
"""
