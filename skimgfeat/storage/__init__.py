"""Storage: what is written to disk and read back.

Feature tables and their model info (``io``, ``tables``, ``table_stream``), per-photo
feature caches (``cache``), content-addressed artifacts (``artifact_cache``),
checkpoints of long runs (``checkpoint``), output containers and column names
(``output``), and sample photos for demos (``samples``).
"""
