"""The one set of patterns for free-text PHI: what the scrubber removes is what the detector flags.

Each pattern has a kind (reported by :func:`medtrinity_assets.privacy.text.find_phi`, never the
matched value). The same list serves both directions, so text that went through
:func:`~medtrinity_assets.privacy.text.scrub_text` is never flagged by the final check (a
property test holds them to it). Patterns are written to stay off what descriptions legitimately
contain: decimals (``0.55-0.55``, ``43.4 mm``), percentages, chunk ids, modality codes (``MR``).
"""

from __future__ import annotations

import re

from medtrinity_assets.core.regex_gate import Gated, GateGroup

_MONTH = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|"
    r"sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
)
_TITLE = r"(?:Dr|Mr|Mrs|Ms|Miss|Mx|Prof|Sr|Sra|Mme|Mlle|Herr|Frau)"
_NAME_WORD = r"[A-Z][\w'\-]*"

_PATTERNS: list[tuple[str, re.Pattern]] = [
    ("email", re.compile(r"[\w.+\-]+@[\w\-]+(?:\.[\w\-]+)+")),
    # a DICOM person name (Family^Given...) anywhere, whatever its letters
    ("dicom_name", re.compile(r"[^\s,;]*\^[^\s,;]*")),
    # a title and the one or two capitalised words after it (Dr. Jane Doe, Mr Smith)
    ("titled_name", re.compile(r"\b" + _TITLE + r"\b\.?\s+" + _NAME_WORD + r"(?:\s+" + _NAME_WORD + r")?")),
    ("labelled_name", re.compile(r"(?i:\b(?:patient(?:'s)?\s+name|name)\s*[:=]\s*)[A-Z][\w'\-]*(?:\s+[A-Z][\w'\-]*)?")),
    # record numbers: a label (MRN, ID, accession, record, case) and the number after it
    ("identifier", re.compile(
        r"(?i:\b(?:MRN|PID|ID|Acc|Accession|Record|Case|Chart)\b\.?\s*(?:no\.?|number|#)?\s*[:#=\-]?\s*)"
        r"[A-Z]{0,3}\d[\d\-]{3,}\b"
    )),
    ("phone", re.compile(
        r"(?<![\w.])(?:\+\d{1,3}[\s.\-]?)?(?:\(\d{2,4}\)\s?|\d{2,4}[\s.\-])\d{3,4}[\s.\-]\d{3,4}(?!\w|\.\d)"
    )),
    # dates: ISO and compact forms, day/month/year with one separator, and written months
    ("date", re.compile(r"(?<![\d.])(?:19|20)\d{2}([-/.])\d{1,2}\1\d{1,2}(?!\.?\d)")),
    ("date", re.compile(r"(?<![\d.])\d{1,2}([-/.])\d{1,2}\1(?:19|20)?\d{2}(?!\.?\d)")),
    ("date", re.compile(r"(?<![\w.])(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])(?![\w.])")),
    ("date", re.compile(r"(?i)\b\d{1,2}(?:st|nd|rd|th)?[\s\-]*(?:of\s+)?" + _MONTH + r"\b\.?[\s,\-]*(?:19|20)?\d{2}\b")),
    ("date", re.compile(r"(?i)\b" + _MONTH + r"\b\.?\s*\d{1,2}(?:st|nd|rd|th)?,?\s+(?:19|20)?\d{2}\b")),
    ("date", re.compile(r"(?i)\b" + _MONTH + r"\b\.?,?\s+(?:19|20)\d{2}\b")),
    # a long run of digits (six or more) is an identifier, never a measurement
    ("identifier", re.compile(r"(?<![\w.])\d{6,}(?![\w]|\.\d)")),
]
#: (kind, compiled pattern), applied in this order when scrubbing; each behind a literal gate
#: (:mod:`medtrinity_assets.core.regex_gate`), as most texts hold no e-mail, title, date or digit run.
PHI_PATTERNS: list[tuple[str, Gated]] = [(kind, Gated(rx)) for kind, rx in _PATTERNS]
#: the patterns a text may match, found at once (most descriptions hold no title, month or @)
PHI_GROUP = GateGroup(rx for _, rx in PHI_PATTERNS)

#: the words (lower case) after which a match may go on past the end of a sentence (". "): titles
#: ("Dr. Jane Doe"), record labels ("MRN. 1234567", "no. 1234"), months ("Jan. 2020"). No pattern
#: goes on past ";", "!" or "?" and a space. A pattern that can must add its words here (a test holds
#: every text's matches to those of its pieces).
JOINING = frozenset(
    "dr mr mrs ms miss mx prof sr sra mme mlle herr frau "
    "mrn pid id acc accession record case chart no number "
    "jan january feb february mar march apr april may jun june jul july aug august "
    "sep sept september oct october nov november dec december".split()
)

KINDS: tuple[str, ...] = tuple(dict.fromkeys(kind for kind, _ in PHI_PATTERNS))
