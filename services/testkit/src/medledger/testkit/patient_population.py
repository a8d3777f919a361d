"""A generated population of FHIR R4 Patients with known duplicates, for measuring duplicate
detection (``bench/duplicates``) and testing it (the record's tests, on a small one).

Deterministic for a seed. Each person is a Patient with a medical record number of its own,
often a social security number, a name drawn from common names (so unrelated people share
names, as they do), a birth date, an address with a postal code, and a phone number. The
hard cases that are NOT duplicates are there too: households (same family name, address and
phone; another given name and birth date) and twins (the same family name, birth date and
address; another given name).

A duplicate is a second record of a person, as a registration desk makes it: a new record
number, and one to three faults from :data:`FAULTS`: a nickname for the given name, the birth
date's day and month transposed, one digit of the birth date mistyped, one letter of the
family or the given name mistyped (substituted, dropped, doubled or swapped with its
neighbour), fields left out (birth date, address, phone, gender, the social security number),
or a new address and phone (the person moved). Some people have two duplicates.
:attr:`Population.truth` holds every pair of records of one person.
"""

from __future__ import annotations

import copy
import random
import string
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

MRN_SYSTEM: Final = "urn:medledger:bench:mrn"
SSN_SYSTEM: Final = "http://hl7.org/fhir/sid/us-ssn"

FAULTS: Final = (
    "nickname",
    "birth-transposed",
    "birth-digit",
    "family-typo",
    "given-typo",
    "missing-fields",
    "moved",
)


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# (formal name, its nicknames): the nicknames are what a second registration may carry.
_MALE: Final = (
    ("William", ("Bill", "Will")),
    ("Robert", ("Bob", "Rob")),
    ("Richard", ("Rick", "Dick")),
    ("James", ("Jim", "Jimmy")),
    ("John", ("Jack", "Johnny")),
    ("Joseph", ("Joe",)),
    ("Thomas", ("Tom",)),
    ("Charles", ("Charlie", "Chuck")),
    ("Christopher", ("Chris",)),
    ("Daniel", ("Dan", "Danny")),
    ("Matthew", ("Matt",)),
    ("Anthony", ("Tony",)),
    ("Andrew", ("Andy", "Drew")),
    ("Edward", ("Ed", "Ted")),
    ("Michael", ("Mike",)),
    ("David", ("Dave",)),
    ("Steven", ("Steve",)),
    ("Benjamin", ("Ben",)),
    ("Samuel", ("Sam",)),
    ("Alexander", ("Alex",)),
    ("Nicholas", ("Nick",)),
    ("Patrick", ("Pat",)),
    ("Peter", ("Pete",)),
    ("Henry", ("Harry", "Hank")),
    ("Lawrence", ("Larry",)),
    ("Gregory", ("Greg",)),
    ("Timothy", ("Tim",)),
    ("Kenneth", ("Ken",)),
    ("Ronald", ("Ron",)),
    ("Donald", ("Don",)),
    ("Frederick", ("Fred",)),
    ("Raymond", ("Ray",)),
    ("Kevin", ()),
    ("Brian", ()),
    ("George", ()),
    ("Paul", ()),
    ("Mark", ()),
    ("Jason", ()),
    ("Ryan", ()),
    ("Gary", ()),
    ("Eric", ()),
    ("Scott", ()),
    ("Jacob", ()),
    ("Tyler", ()),
    ("Aaron", ()),
    ("Adam", ()),
    ("Nathan", ()),
    ("Carlos", ()),
    ("Luis", ()),
    ("Mohammed", ()),
    ("Wei", ()),
    ("Arjun", ()),
)
_FEMALE: Final = (
    ("Elizabeth", ("Liz", "Beth", "Betty")),
    ("Margaret", ("Maggie", "Peggy")),
    ("Katherine", ("Kate", "Katie")),
    ("Jennifer", ("Jen", "Jenny")),
    ("Susan", ("Sue",)),
    ("Deborah", ("Debbie",)),
    ("Patricia", ("Patty", "Trish")),
    ("Barbara", ("Barb",)),
    ("Rebecca", ("Becky",)),
    ("Victoria", ("Vicky",)),
    ("Christine", ("Chris", "Tina")),
    ("Jessica", ("Jess",)),
    ("Abigail", ("Abby",)),
    ("Alexandra", ("Alex", "Sandra")),
    ("Dorothy", ("Dot",)),
    ("Eleanor", ("Ellie",)),
    ("Judith", ("Judy",)),
    ("Kimberly", ("Kim",)),
    ("Pamela", ("Pam",)),
    ("Samantha", ("Sam",)),
    ("Theresa", ("Terry",)),
    ("Virginia", ("Ginny",)),
    ("Josephine", ("Josie",)),
    ("Amanda", ("Mandy",)),
    ("Mary", ()),
    ("Linda", ()),
    ("Sarah", ()),
    ("Karen", ()),
    ("Nancy", ()),
    ("Lisa", ()),
    ("Betty", ()),
    ("Sandra", ()),
    ("Ashley", ()),
    ("Emily", ()),
    ("Michelle", ()),
    ("Laura", ()),
    ("Emma", ()),
    ("Olivia", ()),
    ("Sophia", ()),
    ("Maria", ()),
    ("Ana", ()),
    ("Priya", ()),
    ("Mei", ()),
    ("Fatima", ()),
    ("Grace", ()),
    ("Hannah", ()),
    ("Rachel", ()),
    ("Anna", ()),
)
_FAMILY: Final = _words(
    "Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez "
    "Lopez Gonzalez Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson "
    "White Harris Sanchez Clark Ramirez Lewis Robinson Walker Young Allen King Wright Scott "
    "Torres Nguyen Hill Flores Green Adams Nelson Baker Hall Rivera Campbell Mitchell Carter "
    "Roberts Gomez Phillips Evans Turner Diaz Parker Cruz Edwards Collins Reyes Stewart Morris "
    "Morales Murphy Cook Rogers Gutierrez Ortiz Morgan Cooper Peterson Bailey Reed Kelly "
    "Howard Ramos Kim Cox Ward Richardson Watson Brooks Chavez Wood James Bennett Gray Mendoza "
    "Ruiz Hughes Price Alvarez Castillo Sanders Patel Myers Long Ross Foster Jimenez Powell "
    "Jenkins Perry Russell Sullivan Bell Coleman Butler Henderson Barnes Gonzales Fisher "
    "Vasquez Simmons Romero Jordan Patterson Alexander Hamilton Graham Reynolds Griffin "
    "Wallace Moreno West Cole Hayes Bryant Herrera Gibson Ellis Tran Medina Aguilar Stevens "
    "Murray Ford Castro Marshall Owens Harrison Fernandez McDonald Woods Washington Kennedy "
    "Wells Vargas Henry Chen Freeman Webb Tucker Guzman Burns Crawford Olson Simpson Porter "
    "Hunter Gordon Mendez Silva Shaw Snyder Mason Dixon Munoz Hunt Hicks Holmes Palmer Wagner "
    "Black Robertson Boyd Rose Stone Salazar Fox Warren Mills Meyer Rice Schmidt Garza Daniels "
    "Ferguson Nichols Stephens Soto Weaver Ryan Gardner Payne Grant Dunn Kelley Spencer Hawkins "
    "Arnold Pierce Vazquez Hansen Peters Santos Hart Bradley Knight Elliott Cunningham Duncan "
    "Armstrong Hudson Carroll Lane Riley Andrews Alvarado Ray Delgado Berry Perkins Hoffman "
    "Johnston Matthews Pena Richards Contreras Willis Carpenter Lawrence Sandoval"
)
_STREETS: Final = _words(
    "Oak Maple Cedar Pine Elm Washington Lake Hill Park Main Church Mill River Spring "
    "Franklin Jefferson Lincoln Madison Jackson Highland Sunset Ridge Walnut Chestnut Forest"
)
_SUFFIXES: Final = ("Street", "Avenue", "Road", "Lane", "Drive", "Court")
_CITIES: Final = _words(
    "Springfield Riverton Fairview Greenville Madison Georgetown Clinton Salem Franklin "
    "Arlington Ashland Burlington Dover Hudson Kingston Milton Newport Oxford"
)


@dataclass(frozen=True)
class Population:
    """The Patients in creation order, and who is who."""

    patients: list[dict[str, Any]]
    # Pairs of indices into ``patients`` (smaller first) that are one person.
    truth: frozenset[tuple[int, int]]
    # Each duplicate's index, its original's and the faults it carries.
    duplicates: list[tuple[int, int, tuple[str, ...]]]


@dataclass
class _Person:
    gender: str
    given: str
    nicknames: tuple[str, ...]
    middle: str
    family: str
    birth: tuple[int, int, int]
    address: tuple[str, str, str]
    phone: str
    ssn: str


def _zipf_choice(rng: random.Random, items: tuple[Any, ...] | list[Any]) -> Any:
    """Common names come up more often: item k with weight 1/(k+1)^0.8."""
    weights = [1.0 / (k + 1) ** 0.8 for k in range(len(items))]
    return rng.choices(list(items), weights=weights)[0]


def _address(rng: random.Random) -> tuple[str, str, str]:
    city_index = rng.randrange(len(_CITIES))
    line = f"{rng.randint(1, 9999)} {rng.choice(_STREETS)} {rng.choice(_SUFFIXES)}"
    postal = f"{10000 + city_index * 397 + rng.randrange(40):05d}"
    return line, _CITIES[city_index], postal


def _phone(rng: random.Random) -> str:
    return f"({rng.randint(201, 989)}) 555-{rng.randint(0, 9999):04d}"


def _birth(rng: random.Random) -> tuple[int, int, int]:
    return rng.randint(1930, 2015), rng.randint(1, 12), rng.randint(1, 28)


def _new_person(rng: random.Random) -> _Person:
    gender = rng.choice(("male", "female"))
    given, nicknames = _zipf_choice(rng, _MALE if gender == "male" else _FEMALE)
    middle = ""
    if rng.random() < 0.3:
        middle = rng.choice(_MALE if gender == "male" else _FEMALE)[0]
    ssn = ""
    if rng.random() < 0.4:
        ssn = f"{rng.randint(100, 899):03d}-{rng.randint(10, 99):02d}-{rng.randint(1000, 9999):04d}"
    return _Person(
        gender=gender,
        given=given,
        nicknames=nicknames,
        middle=middle,
        family=_zipf_choice(rng, _FAMILY),
        birth=_birth(rng),
        address=_address(rng),
        phone=_phone(rng),
        ssn=ssn,
    )


def _relative(rng: random.Random, of: _Person, *, twin: bool) -> _Person:
    """Someone of the same household: its family name, address and phone; a twin also has
    the birth date."""
    person = _new_person(rng)
    taken = {of.given, of.middle, *of.nicknames}
    while {person.given, person.middle, *person.nicknames} & taken or of.given in person.nicknames:
        person = _new_person(rng)
    person.family, person.address, person.phone = of.family, of.address, of.phone
    if twin:
        person.birth = of.birth
    return person


def _patient(person: _Person, mrn: str) -> dict[str, Any]:
    given = [person.given] + ([person.middle] if person.middle else [])
    year, month, day = person.birth
    line, city, postal = person.address
    identifiers: list[dict[str, Any]] = [
        {
            "use": "usual",
            "type": {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}
                ]
            },
            "system": MRN_SYSTEM,
            "value": mrn,
        }
    ]
    if person.ssn:
        identifiers.append({"system": SSN_SYSTEM, "value": person.ssn})
    return {
        "resourceType": "Patient",
        "identifier": identifiers,
        "active": True,
        "name": [{"use": "official", "family": person.family, "given": given}],
        "telecom": [{"system": "phone", "value": person.phone, "use": "home"}],
        "gender": person.gender,
        "birthDate": f"{year:04d}-{month:02d}-{day:02d}",
        "address": [{"line": [line], "city": city, "postalCode": postal, "country": "US"}],
    }


def _typo(rng: random.Random, word: str) -> str:
    """One letter substituted, dropped, doubled or swapped with its neighbour (never the
    first letter: registrars rarely get that wrong, and it keeps the word findable)."""
    if len(word) < 3:
        return word
    at = rng.randrange(1, len(word) - 1)
    kind = rng.choice(("substitute", "drop", "double", "swap"))
    if kind == "substitute":
        letter = rng.choice([c for c in string.ascii_lowercase if c != word[at].lower()])
        return word[:at] + letter + word[at + 1 :]
    if kind == "drop":
        return word[:at] + word[at + 1 :]
    if kind == "double":
        return word[:at] + word[at] + word[at:]
    if word[at] == word[at + 1] or at + 1 == len(word):
        return word[:at] + word[at] + word[at:]  # a swap would change nothing: double it
    return word[:at] + word[at + 1] + word[at] + word[at + 2 :]


def _applicable(person: _Person, fault: str) -> bool:
    if fault == "nickname":
        return bool(person.nicknames)
    if fault == "birth-transposed":
        _, month, day = person.birth
        return day <= 12 and day != month
    return True


def _mistyped_birth(rng: random.Random, birth: tuple[int, int, int]) -> tuple[int, int, int]:
    """One digit of the year's last or the day changed (the day stays a valid one)."""
    year, month, day = birth
    while True:
        if rng.random() < 0.5:
            changed = (year - year % 10 + rng.randrange(10), month, day)
        else:
            changed = (year, month, day - day % 10 + rng.randrange(1, 10))
        if changed != birth and changed[2] <= 28:
            return changed


def _apply(rng: random.Random, person: _Person, twin: _Person, fault: str) -> set[str]:
    """Applies ``fault`` to ``twin`` (a copy of ``person``); returns the elements to drop."""
    if fault == "nickname":
        twin.given, twin.middle = rng.choice(person.nicknames), ""
    elif fault == "birth-transposed":
        year, month, day = twin.birth
        twin.birth = (year, day, month)
    elif fault == "birth-digit":
        twin.birth = _mistyped_birth(rng, twin.birth)
    elif fault == "family-typo":
        twin.family = _typo(rng, twin.family).capitalize()
    elif fault == "given-typo":
        twin.given = _typo(rng, twin.given).capitalize()
    elif fault == "missing-fields":
        choices = ("birthDate", "address", "telecom", "gender", "ssn")
        return set(rng.sample(choices, rng.randint(1, 2)))
    elif fault == "moved":
        twin.address, twin.phone = _address(rng), _phone(rng)
    return set()


def _duplicate(
    rng: random.Random, person: _Person, mrn: str, faults: Iterable[str]
) -> dict[str, Any]:
    twin = copy.deepcopy(person)
    dropped: set[str] = set()
    for fault in faults:
        dropped |= _apply(rng, person, twin, fault)
    if "ssn" in dropped:
        twin.ssn = ""
    patient = _patient(twin, mrn)
    for element in dropped - {"ssn"}:
        patient.pop(element, None)
    return patient


def population(
    size: int, *, duplicate_rate: float = 0.1, seed: int = 14, household_rate: float = 0.15
) -> Population:
    """About ``size`` Patients, ``duplicate_rate`` of them second (or third) records of
    another; deterministic for ``seed``."""
    rng = random.Random(seed)  # noqa: S311 (test data, reproducible by design)
    originals = max(1, round(size / (1 + duplicate_rate)))
    people: list[_Person] = []
    while len(people) < originals:
        person = _new_person(rng)
        people.append(person)
        if len(people) < originals and rng.random() < household_rate:
            people.append(_relative(rng, person, twin=rng.random() < 0.1))
    patients = [_patient(p, f"MRN{n:07d}") for n, p in enumerate(people)]
    records_of: dict[int, list[int]] = {n: [n] for n in range(len(people))}
    duplicates: list[tuple[int, int, tuple[str, ...]]] = []
    while len(patients) < size:
        original = rng.randrange(len(people))
        person = people[original]
        faults = tuple(
            dict.fromkeys(
                rng.choice([f for f in FAULTS if _applicable(person, f)])
                for _ in range(rng.choice((1, 1, 2, 2, 3)))
            )
        )
        index = len(patients)
        patients.append(_duplicate(rng, person, f"MRN{index:07d}", faults))
        records_of[original].append(index)
        duplicates.append((index, original, faults))
    truth = frozenset(
        (a, b)
        for records in records_of.values()
        for i, a in enumerate(records)
        for b in records[i + 1 :]
    )
    order = list(range(len(patients)))
    rng.shuffle(order)  # duplicates are not written right after their originals
    position = {old: new for new, old in enumerate(order)}
    return Population(
        patients=[patients[old] for old in order],
        truth=frozenset(
            (min(position[a], position[b]), max(position[a], position[b])) for a, b in truth
        ),
        duplicates=[(position[d], position[o], f) for d, o, f in duplicates],
    )


@dataclass(frozen=True)
class Accuracy:
    """Precision and recall of found pairs against the truth."""

    true_positives: int
    false_positives: int
    false_negatives: int

    @property
    def precision(self) -> float:
        found = self.true_positives + self.false_positives
        return self.true_positives / found if found else 1.0

    @property
    def recall(self) -> float:
        real = self.true_positives + self.false_negatives
        return self.true_positives / real if real else 1.0


def accuracy(found: Iterable[tuple[int, int]], truth: Iterable[tuple[int, int]]) -> Accuracy:
    """Compares unordered pairs: (a, b) and (b, a) are the same pair."""
    found_pairs = {frozenset(p) for p in found if p[0] != p[1]}
    real = {frozenset(p) for p in truth}
    hits = len(found_pairs & real)
    return Accuracy(hits, len(found_pairs) - hits, len(real) - hits)
