"""FHIR R4 ids, resource type names and the three forms of ``Reference.reference``.

https://hl7.org/fhir/R4/references.html#literal: a relative ``Type/id`` (optionally
``/_history/version``) resolved against our base; an absolute URL (``https://...``, or a
``urn:uuid:``/``urn:oid:`` name); or ``#id`` naming a contained resource (``#`` alone is the
container). Anything else, ``Patient?identifier=...`` searches included, is not a reference
a stored resource can keep.
"""

from __future__ import annotations

import functools
import re
from enum import Enum
from typing import Final, NamedTuple

from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.resource import Resource

# https://hl7.org/fhir/R4/datatypes.html#id
FHIR_ID: Final = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_RELATIVE: Final = re.compile(
    r"(?P<type>[A-Z][A-Za-z]{0,63})/(?P<id>[A-Za-z0-9\-.]{1,64})"
    r"(?:/_history/(?P<version>[A-Za-z0-9\-.]{1,64}))?"
)
_ABSOLUTE: Final = re.compile(
    r"https?://[^\s/?#]+(?:/[^\s]*)?"
    r"|urn:uuid:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|urn:oid:[0-2](?:\.(?:0|[1-9][0-9]*))+"
)
_LOCAL: Final = re.compile(r"#(?:[A-Za-z0-9\-.]{1,64})?")


class ReferenceForm(Enum):
    RELATIVE = "relative"
    ABSOLUTE = "absolute"
    LOCAL = "local"


class LiteralReference(NamedTuple):
    """A relative reference: ``Type/id``, with the version when it names one."""

    resource_type: str
    id: str
    version: str | None = None

    def __str__(self) -> str:
        base = f"{self.resource_type}/{self.id}"
        return base if self.version is None else f"{base}/_history/{self.version}"


def is_fhir_id(value: object) -> bool:
    return isinstance(value, str) and FHIR_ID.fullmatch(value) is not None


# Bounded: the names come from clients.
@functools.lru_cache(maxsize=1024)
def is_resource_type(name: str) -> bool:
    """True for a concrete FHIR resource type (``Patient``), false for data types and the rest.

    The models are R4B's, which hold every R4 resource type our resources refer to.
    """
    if not re.fullmatch(r"[A-Z][A-Za-z]{0,63}", name):
        return False
    try:
        model = get_fhir_model_class(name)
    except ValueError:  # not a model at all
        return False
    return issubclass(model, Resource) and name not in {"Resource", "DomainResource"}


def reference_form(reference: str) -> ReferenceForm | None:
    """The form of a ``Reference.reference`` string, or None when it has none of the three."""
    if parse_relative(reference) is not None:
        return ReferenceForm.RELATIVE
    if _LOCAL.fullmatch(reference):
        return ReferenceForm.LOCAL
    if _ABSOLUTE.fullmatch(reference):
        return ReferenceForm.ABSOLUTE
    return None


def parse_relative(reference: str) -> LiteralReference | None:
    """``Type/id[/_history/v]`` with a known resource type and valid ids, else None."""
    match = _RELATIVE.fullmatch(reference)
    if match is None or not is_resource_type(match["type"]):
        return None
    return LiteralReference(match["type"], match["id"], match["version"])
