"""Whether two Patient resources are likely the same person: the facts compared, the
blocking keys that nominate pairs, and the score. Pure functions, no I/O.

Blocking. Comparing every Patient with every other is quadratic, so only pairs sharing a
*blocking key* are scored. The keys are chosen so a duplicate with the usual data-entry
faults still shares at least one with its original: a phonetic code (Soundex, Metaphone)
of family and given name, in either order (a typo or a spelling variant keeps the code; a
swapped first and last name keeps the pair); the birth date with day and month in sorted
order (a transposed date keeps the key); the birth year with the family name's NYSIIS code (a
mistyped day or month keeps it), and that code with the sorted day and month (a mistyped year
keeps it); each identifier; each phone number and e-mail address.
A nickname ("Bill" for "William") changes the given name's codes, so such a pair is found
through the birth date, the year and family name, or a contact. The keys are clear text
here; the storage keeps only their keyed digests (:mod:`blind_index`), so the database never
holds a phonetic code, which would narrow a name down.

Scoring. Each pair is scored the Fellegi-Sunter way: every compared element adds the log2
likelihood ratio of what was seen (agreement, partial agreement, disagreement) among true
duplicates versus among pairs that merely share a blocking key; an element missing on either
side adds nothing, so a duplicate with empty fields is judged on what it has. The ratios are
set by hand from the faults duplicates carry (the benchmark, ``bench/duplicates``, measures
what they give). The sum, less :data:`PRIOR_WEIGHT`, goes through the logistic function to a
match probability in 0..1. A name disagreeing outright weighs heavily (twins share a family
name, a birth date and an address, and are two people); an address disagreeing weighs
little (people move); a medical record number of the same system disagreeing weighs nothing
(a duplicate record is exactly one that was given a second number), while identifiers of a
person (social security, passport, driving licence) that disagree weigh against.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import jellyfish
from rapidfuzz.distance import OSA, JaroWinkler

DEFAULT_MIN_SCORE: Final = 0.9
"""Pairs below this match probability are not reported unless a caller asks for a lower
threshold (``bench/duplicates`` measures precision and recall at this value)."""

PRIOR_WEIGHT: Final = 11.0
"""Evidence (log2 likelihood ratio) at which a pair scores 0.5: blocked pairs are mostly not
duplicates, and the score says so until the elements agree well beyond chance."""

# What each comparison outcome weighs (log2 of m/u: how much likelier the outcome is among
# duplicates than among pairs that share a blocking key).
FAMILY_EXACT: Final = 7.0
FAMILY_TYPO: Final = 4.5  # Jaro-Winkler >= FAMILY_TYPO_SIMILARITY
FAMILY_NEAR: Final = 1.0  # Jaro-Winkler >= FAMILY_NEAR_SIMILARITY
FAMILY_DIFFERS: Final = -5.0
GIVEN_EXACT: Final = 5.0
GIVEN_NICKNAME: Final = 4.0
GIVEN_TYPO: Final = 3.5
GIVEN_MIDDLE: Final = 2.0  # one's first given name is the other's middle name
GIVEN_INITIAL: Final = 1.0  # one is the other's initial
GIVEN_NICKNAME_TYPO: Final = 2.5  # a nickname, mistyped
GIVEN_DIFFERS: Final = -12.0
BIRTH_EXACT: Final = 8.0
BIRTH_TRANSPOSED: Final = 5.5  # day and month swapped
BIRTH_ONE_DIGIT: Final = 4.0  # one digit of YYYYMMDD differs
BIRTH_SAME_YEAR: Final = -1.0  # only the year (or the precision given) agrees
BIRTH_DIFFERS: Final = -7.0
GENDER_AGREES: Final = 0.8
GENDER_DIFFERS: Final = -4.0
IDENTIFIER_AGREES: Final = 9.0
PERSON_IDENTIFIER_DIFFERS: Final = -6.0
PHONE_AGREES: Final = 4.0
EMAIL_AGREES: Final = 5.0
POSTAL_AGREES: Final = 2.5
POSTAL_DIFFERS: Final = -0.5
LINE_AGREES: Final = 2.5
LINE_DIFFERS: Final = -0.3
CITY_AGREES: Final = 0.5  # counted when the postal codes do not already agree
HOUSEHOLD_CAP: Final = 6.0
"""A household shares its address and phone: together they say "same household" once, not
twice (twins and spouses agree on both), so their sum counts up to this much."""

FAMILY_TYPO_SIMILARITY: Final = 0.92
FAMILY_NEAR_SIMILARITY: Final = 0.85
GIVEN_TYPO_SIMILARITY: Final = 0.9
GIVEN_TYPO_LETTERS: Final = 5
LINE_SIMILARITY: Final = 0.9

# identifier.type codes (v2 table 0203) that name a person, not a record.
PERSON_IDENTIFIER_TYPES: Final = frozenset({"SS", "SB", "NI", "NH", "PPN", "DL", "CZ"})
_SSN_SYSTEM: Final = "http://hl7.org/fhir/sid/us-ssn"

# Given names and their usual short forms (English); each line one person's name.
_NICKNAME_GROUPS: Final = (
    "william bill billy will willy liam",
    "robert bob bobby rob robbie bert",
    "richard rick ricky dick rich",
    "james jim jimmy jamie",
    "john jon jack johnny",
    "jonathan jon jonny nathan",
    "joseph joe joey",
    "thomas tom tommy",
    "charles charlie chuck chas",
    "christopher chris kit",
    "daniel dan danny",
    "matthew matt",
    "anthony tony",
    "andrew andy drew",
    "edward ed eddie ted ned",
    "michael mike mickey mick",
    "david dave davy",
    "steven stephen steve",
    "benjamin ben benny",
    "samuel sam sammy",
    "alexander alex al sandy",
    "nicholas nick nicky",
    "patrick pat paddy",
    "peter pete",
    "henry harry hank",
    "lawrence larry",
    "gregory greg",
    "timothy tim timmy",
    "kenneth ken kenny",
    "ronald ron ronnie",
    "donald don donny",
    "gerald gerry jerry",
    "frederick fred freddie",
    "francis frank frankie",
    "raymond ray",
    "elizabeth liz lizzie beth betty eliza betsy",
    "margaret maggie meg peggy marge",
    "katherine kate katie kathy kat catherine",
    "jennifer jen jenny",
    "susan sue susie",
    "deborah debbie deb",
    "patricia patty pat trish",
    "barbara barb babs",
    "rebecca becky becca",
    "victoria vicky tori",
    "christine chris chrissy tina",
    "jessica jess jessie",
    "abigail abby",
    "alexandra alex sandra sandy",
    "dorothy dot dottie",
    "eleanor ellie nora",
    "judith judy",
    "kimberly kim",
    "pamela pam",
    "samantha sam",
    "theresa terry tess",
    "virginia ginny",
    "josephine jo josie",
    "olivia liv",
    "amanda mandy",
)


def _nickname_groups() -> dict[str, frozenset[int]]:
    groups: dict[str, set[int]] = {}
    for number, line in enumerate(_NICKNAME_GROUPS):
        for name in line.split():
            groups.setdefault(name, set()).add(number)
    return {name: frozenset(numbers) for name, numbers in groups.items()}


_NICKNAMES: Final = _nickname_groups()
_GROUP_NAMES: Final = tuple(tuple(line.split()) for line in _NICKNAME_GROUPS)


def _group_names(groups: frozenset[int]) -> Iterable[str]:
    for number in groups:
        yield from _GROUP_NAMES[number]


_NOT_LETTERS: Final = re.compile(r"[^a-z]")
_NOT_ALNUM: Final = re.compile(r"[^a-z0-9]")
_DATE: Final = re.compile(r"(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?")


def _letters(text: str) -> str:
    """Lower-case ASCII letters only: accents dropped (``José`` = ``jose``), spaces, hyphens
    and apostrophes gone (``O'Neil`` = ``oneil``)."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return _NOT_LETTERS.sub("", plain.lower())


def _alnum(text: str) -> str:
    """Lower-case ASCII letters and digits only (identifiers, postal codes, street lines)."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return _NOT_ALNUM.sub("", plain.lower())


@dataclass(frozen=True)
class PersonName:
    family: str
    given: tuple[str, ...]


@dataclass(frozen=True)
class BirthDate:
    year: int
    month: int | None = None
    day: int | None = None


@dataclass(frozen=True)
class Address:
    line: str
    city: str
    postal_code: str


@dataclass(frozen=True)
class PatientFacts:
    """What a Patient resource says that identifies a person, normalised."""

    names: tuple[PersonName, ...] = ()
    birth: BirthDate | None = None
    gender: str = ""
    # (system, value); person-level ones (SSN, passport, ...) also in person_identifiers.
    identifiers: frozenset[tuple[str, str]] = frozenset()
    person_identifiers: frozenset[tuple[str, str]] = frozenset()
    phones: frozenset[str] = frozenset()
    emails: frozenset[str] = frozenset()
    addresses: tuple[Address, ...] = field(default=())


def _items(value: object) -> list[Mapping[str, Any]]:
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _names(resource: Mapping[str, Any]) -> tuple[PersonName, ...]:
    names = []
    for name in _items(resource.get("name")):
        family = _letters(_text(name.get("family")))
        given_value = name.get("given")
        given = (
            tuple(g for g in (_letters(_text(v)) for v in (given_value or [])) if g)
            if isinstance(given_value, list)
            else ()
        )
        if not family and not given:
            words = [w for w in (_letters(p) for p in _text(name.get("text")).split()) if w]
            if words:
                family, given = words[-1], tuple(words[:-1])
        if family or given:
            names.append(PersonName(family, given))
    return tuple(dict.fromkeys(names))


def _birth(resource: Mapping[str, Any]) -> BirthDate | None:
    match = _DATE.fullmatch(_text(resource.get("birthDate")))
    if match is None:
        return None
    year, month, day = match.groups()
    return BirthDate(int(year), int(month) if month else None, int(day) if day else None)


def _is_person_identifier(identifier: Mapping[str, Any], system: str) -> bool:
    if system == _SSN_SYSTEM:
        return True
    kind = identifier.get("type")
    codings = _items(kind.get("coding")) if isinstance(kind, Mapping) else []
    return any(_text(c.get("code")) in PERSON_IDENTIFIER_TYPES for c in codings)


def patient_facts(resource: object) -> PatientFacts:
    """The identifying facts of a Patient resource (anything else: none)."""
    if not isinstance(resource, Mapping) or resource.get("resourceType") != "Patient":
        return PatientFacts()
    identifiers, person = set(), set()
    for identifier in _items(resource.get("identifier")):
        system = _text(identifier.get("system")).strip()
        value = _alnum(_text(identifier.get("value")))
        if value:
            identifiers.add((system, value))
            if _is_person_identifier(identifier, system):
                person.add((system, value))
    phones, emails = set(), set()
    for contact in _items(resource.get("telecom")):
        value = _text(contact.get("value")).strip().lower()
        if contact.get("system") == "phone":
            digits = re.sub(r"\D", "", value)[-10:]
            if len(digits) >= 7:
                phones.add(digits)
        elif contact.get("system") == "email" and "@" in value:
            emails.add(value)
    addresses = []
    for address in _items(resource.get("address")):
        lines = address.get("line")
        line = " ".join(_text(v) for v in lines) if isinstance(lines, list) else ""
        found = Address(
            _alnum(line),
            _letters(_text(address.get("city"))),
            _alnum(_text(address.get("postalCode"))),
        )
        if found.line or found.city or found.postal_code:
            addresses.append(found)
    gender = _text(resource.get("gender"))
    return PatientFacts(
        names=_names(resource),
        birth=_birth(resource),
        gender=gender if gender in ("male", "female", "other") else "",
        identifiers=frozenset(identifiers),
        person_identifiers=frozenset(person),
        phones=frozenset(phones),
        emails=frozenset(emails),
        addresses=tuple(dict.fromkeys(addresses)),
    )


# -- blocking -------------------------------------------------------------------------------


def blocking_keys(facts: PatientFacts) -> frozenset[str]:
    """The clear blocking keys of a patient, each prefixed by its kind (``sx|...``);
    two patients are compared when they share one."""
    keys: set[str] = set()
    for name in facts.names:
        given = name.given[0] if name.given else ""
        if name.family and given:
            sx = sorted((jellyfish.soundex(name.family), jellyfish.soundex(given)))
            mp = sorted((jellyfish.metaphone(name.family), jellyfish.metaphone(given)))
            keys.add("sx|" + "|".join(sx))
            keys.add("mp|" + "|".join(mp))
        if name.family and facts.birth is not None:
            keys.add(f"yf|{facts.birth.year}|{jellyfish.nysiis(name.family)}")
    birth = facts.birth
    if birth is not None and birth.month is not None and birth.day is not None:
        low, high = sorted((birth.month, birth.day))
        keys.add(f"bd|{birth.year}|{low}|{high}")
        # A mistyped year keeps this one.
        keys.update(
            f"fd|{jellyfish.nysiis(n.family)}|{low}|{high}" for n in facts.names if n.family
        )
    keys.update(f"id|{system}|{value}" for system, value in facts.identifiers)
    keys.update(f"tel|{phone}" for phone in facts.phones)
    keys.update(f"em|{email}" for email in facts.emails)
    return frozenset(keys)


def patient_blocking_keys(resource_json: str | bytes) -> frozenset[str]:
    """:func:`blocking_keys` of a stored Patient's JSON (none for anything unreadable)."""
    try:
        return blocking_keys(patient_facts(json.loads(resource_json)))
    except ValueError:
        return frozenset()


# -- scoring --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Match:
    """A pair's match probability and the FHIR elements that agreed."""

    score: float
    weight: float
    matched_fields: tuple[str, ...]


def _jw(a: str, b: str) -> float:
    return float(JaroWinkler.similarity(a, b))


def _one_typo(a: str, b: str, shortest: int = 3) -> bool:
    """One letter substituted, dropped, added, or two neighbours swapped, in names of at
    least ``shortest`` letters (in shorter ones a typo as often makes another name)."""
    return min(len(a), len(b)) >= shortest and OSA.distance(a, b, score_cutoff=1) <= 1


def _family_weight(a: str, b: str) -> float:
    if not a or not b:
        return 0.0
    if a == b:
        return FAMILY_EXACT
    similarity = _jw(a, b)
    if similarity >= FAMILY_TYPO_SIMILARITY or _one_typo(a, b):
        return FAMILY_TYPO
    if similarity >= FAMILY_NEAR_SIMILARITY:
        return FAMILY_NEAR
    return FAMILY_DIFFERS


def _one_given(a: str, b: str) -> float:
    if a == b:
        return GIVEN_EXACT
    groups_a, groups_b = _NICKNAMES.get(a, frozenset()), _NICKNAMES.get(b, frozenset())
    if groups_a & groups_b:
        return GIVEN_NICKNAME
    # Mark and Mary, Dan and Don: one letter apart, two names; so five letters at least.
    if _jw(a, b) >= GIVEN_TYPO_SIMILARITY or _one_typo(a, b, GIVEN_TYPO_LETTERS):
        return GIVEN_TYPO
    if any(_one_typo(a, other, GIVEN_TYPO_LETTERS) for other in _group_names(groups_b)) or any(
        _one_typo(b, other, GIVEN_TYPO_LETTERS) for other in _group_names(groups_a)
    ):
        return GIVEN_NICKNAME_TYPO
    if (len(a) == 1 and b.startswith(a)) or (len(b) == 1 and a.startswith(b)):
        return GIVEN_INITIAL
    return GIVEN_DIFFERS


def _given_weight(a: Sequence[str], b: Sequence[str]) -> float:
    if not a or not b:
        return 0.0
    # The first given names decide; one's first name as the other's middle name (registered
    # under the name the person goes by) counts for less.
    weight = _one_given(a[0], b[0])
    if weight < GIVEN_MIDDLE and (a[0] in b[1:] or b[0] in a[1:]):
        return GIVEN_MIDDLE
    return weight


def _name_weight(a: Sequence[PersonName], b: Sequence[PersonName]) -> tuple[float, float]:
    """(family, given) weights of the best-agreeing pair of names, swapped order included."""
    best = (0.0, 0.0)
    found = False
    for x in a:
        for y in b:
            straight = (_family_weight(x.family, y.family), _given_weight(x.given, y.given))
            candidates = [straight]
            if x.given and y.given:
                candidates.append(
                    (
                        _family_weight(x.family, y.given[0]),
                        _given_weight((x.given[0],), (y.family,)),
                    )
                )
            for weights in candidates:
                if not found or sum(weights) > sum(best):
                    best, found = weights, True
    return best


def _digits(birth: BirthDate) -> str:
    return f"{birth.year:04d}{birth.month or 0:02d}{birth.day or 0:02d}"


def _birth_weight(a: BirthDate | None, b: BirthDate | None) -> float:
    if a is None or b is None:
        return 0.0
    if a == b and a.day is not None:
        return BIRTH_EXACT
    if a.month is None or b.month is None or a.day is None or b.day is None:
        # Partial dates: agreeing to the precision both have is weak evidence.
        same = a.year == b.year and (a.month is None or b.month is None or a.month == b.month)
        return BIRTH_SAME_YEAR if same else BIRTH_DIFFERS
    if a.year == b.year and (a.month, a.day) == (b.day, b.month):
        return BIRTH_TRANSPOSED
    if sum(x != y for x, y in zip(_digits(a), _digits(b), strict=True)) == 1:
        return BIRTH_ONE_DIGIT
    return BIRTH_SAME_YEAR if a.year == b.year else BIRTH_DIFFERS


def _address_weights(a: Sequence[Address], b: Sequence[Address]) -> tuple[float, list[str]]:
    if not a or not b:
        return 0.0, []
    postal = {x.postal_code for x in a if x.postal_code} & {y.postal_code for y in b}
    postal_seen = any(x.postal_code for x in a) and any(y.postal_code for y in b)
    weight, matched = 0.0, []
    if postal:
        weight += POSTAL_AGREES
        matched.append("address.postalCode")
    elif postal_seen:
        weight += POSTAL_DIFFERS
        cities = {x.city for x in a if x.city} & {y.city for y in b}
        if cities:
            weight += CITY_AGREES
            matched.append("address.city")
    lines = [(x.line, y.line) for x in a for y in b if x.line and y.line]
    if lines:
        if max(_jw(x, y) for x, y in lines) >= LINE_SIMILARITY:
            weight += LINE_AGREES
            matched.append("address.line")
        else:
            weight += LINE_DIFFERS
    return weight, matched


def _identifier_weight(a: PatientFacts, b: PatientFacts) -> float:
    if a.identifiers & b.identifiers:
        return IDENTIFIER_AGREES
    systems = {s for s, _ in a.person_identifiers} & {s for s, _ in b.person_identifiers}
    return PERSON_IDENTIFIER_DIFFERS if systems else 0.0


def probability(weight: float) -> float:
    """The match probability of a pair with this total evidence."""
    exponent = max(min(PRIOR_WEIGHT - weight, 60.0), -60.0)
    return 1.0 / (1.0 + math.pow(2.0, exponent))


def score_pair(a: PatientFacts, b: PatientFacts) -> Match:
    """How likely ``a`` and ``b`` are one person, and which elements agreed."""
    matched: list[str] = []
    family, given = _name_weight(a.names, b.names)
    weight = family + given
    if family > 0:
        matched.append("name.family")
    if given > 0:
        matched.append("name.given")
    birth = _birth_weight(a.birth, b.birth)
    weight += birth
    if birth > 0:
        matched.append("birthDate")
    if a.gender and b.gender:
        agrees = a.gender == b.gender
        weight += GENDER_AGREES if agrees else GENDER_DIFFERS
        if agrees:
            matched.append("gender")
    identifier = _identifier_weight(a, b)
    weight += identifier
    if identifier > 0:
        matched.append("identifier")
    if a.emails & b.emails:
        weight += EMAIL_AGREES
    phone = PHONE_AGREES if a.phones & b.phones else 0.0
    if a.emails & b.emails or phone:
        matched.append("telecom")
    address, address_fields = _address_weights(a.addresses, b.addresses)
    weight += min(address + phone, HOUSEHOLD_CAP)
    matched += address_fields
    return Match(probability(weight), weight, tuple(matched))


# -- pairs ----------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class ScoredPair:
    """A candidate pair (``first`` < ``second``), ordered highest score first."""

    rank: tuple[float, str, str]
    first: str = field(compare=False)
    second: str = field(compare=False)
    score: float = field(compare=False)
    matched_fields: tuple[str, ...] = field(compare=False)


SCORE_DIGITS: Final = 6
"""Scores are rounded to this many digits, so the order (and a page token's position) does
not hang on a float's last bits."""


def candidate_pairs(blocks: Iterable[Iterable[str]]) -> set[tuple[str, str]]:
    """Every pair of distinct ids that share a block, each once, smaller id first."""
    pairs: set[tuple[str, str]] = set()
    for block in blocks:
        members = sorted(set(block))
        for i, first in enumerate(members):
            pairs.update((first, second) for second in members[i + 1 :])
    return pairs


def score_pairs(
    pairs: Iterable[tuple[str, str]], facts: Mapping[str, PatientFacts], min_score: float
) -> list[ScoredPair]:
    """The pairs scoring at least ``min_score``, highest first (then by ids); pairs naming a
    patient without facts are skipped. CPU-bound: run it in a worker thread."""
    scored = []
    for first, second in pairs:
        a, b = facts.get(first), facts.get(second)
        if a is None or b is None:
            continue
        match = score_pair(a, b)
        score = round(match.score, SCORE_DIGITS)
        if score >= min_score:
            scored.append(
                ScoredPair((-score, first, second), first, second, score, match.matched_fields)
            )
    scored.sort()
    return scored


def block_in_memory(facts: Mapping[str, PatientFacts]) -> list[list[str]]:
    """The blocks of a population held in memory (tests, the benchmark's check): ids
    grouped by each blocking key they share."""
    blocks: dict[str, list[str]] = {}
    for patient_id, patient in facts.items():
        for key in blocking_keys(patient):
            blocks.setdefault(key, []).append(patient_id)
    return [members for members in blocks.values() if len(members) > 1]
