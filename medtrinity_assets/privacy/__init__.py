"""Privacy: one place for identifying values, free-text PHI patterns, scrubbing and detection.

- :mod:`.identifiers` — matching a source's identifying values in text and paths (regex trie);
- :mod:`.dicom` — the identifying attributes of a DICOM dataset;
- :mod:`.patterns` — the one pattern set (titled names, dates, phones, e-mails, record numbers);
- :mod:`.text` — :func:`scrub_text` (ingestion) and :func:`find_phi` (the final check);
- :mod:`.store` — a source's values kept between stages as salted hashes.
"""

from medtrinity_assets.privacy.dicom import IDENTIFYING_KEYWORDS, dicom_identifier_values
from medtrinity_assets.privacy.identifiers import IdentifierMatcher, matcher_for
from medtrinity_assets.privacy.store import HashedMatcher, IdentifierStore, identifier_store
from medtrinity_assets.privacy.text import find_phi, scrub_reason, scrub_text

__all__ = [
    "IDENTIFYING_KEYWORDS",
    "HashedMatcher",
    "IdentifierMatcher",
    "IdentifierStore",
    "dicom_identifier_values",
    "find_phi",
    "identifier_store",
    "matcher_for",
    "scrub_reason",
    "scrub_text",
]
