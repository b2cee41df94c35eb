"""The archive: one folder that owns the photos, features, hashes, local features and lots of a catalogue.

- :class:`Archive`: read one consistent generation (rows, photos, searches, hashes, lots).
- :func:`ingest`: the daily intake of a folder of new photos, with its report.
- :func:`remove`: take photos out (by identity, file name or item), and compact.

See :mod:`skimgfeat.archive.folder` for the layout and docs/millions-of-photos.md.
"""

from .folder import Archive
from .intake import IngestResult, ingest, intake_report
from .removal import RemoveResult, read_name_list, remove

__all__ = ["Archive", "IngestResult", "RemoveResult", "ingest", "intake_report", "read_name_list", "remove"]
