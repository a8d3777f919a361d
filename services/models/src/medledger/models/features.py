"""What each model reads from the record: one table per model, one row per input feature.

A row says which Observation carries the feature (code), in which UCUM unit its value is
expected, how that value becomes the model's input (``transform``), and the plausible range a
value must lie in to be used at all (the inference service refuses anything outside it, naming
the feature). The tables are the one definition; the model cards and the ONNX input order are
generated from them. Nothing here imports scikit-learn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final, Literal

LOINC: Final = "http://loinc.org"
ADMINISTRATIVE_GENDER: Final = "http://hl7.org/fhir/administrative-gender"
# The breast-cancer features are measurements of cell nuclei in a digitised fine-needle
# aspirate image; no standard terminology codes them, so they live in a code system of ours.
FNA_CYTOLOGY: Final = "https://medledger.dev/fhir/CodeSystem/fna-cytology"

Transform = Literal["identity", "ln"]


@dataclass(frozen=True)
class Coding:
    system: str
    code: str
    display: str

    def to_fhir(self) -> dict[str, str]:
        return {"system": self.system, "code": self.code, "display": self.display}


@dataclass(frozen=True)
class Feature:
    """One model input and the Observation it comes from.

    ``unit`` is the UCUM code of the Observation value (None for a coded value, whose
    ``categories`` map each code to the number the model was trained on). ``low``/``high``
    bound the plausible Observation value, inclusive, in ``unit``; ``transform`` turns that
    value into the model's input (``ln``: natural logarithm). ``molar_mass`` (g/mol) lets a
    service convert a molar concentration (mmol/L) to the mass concentration expected here.
    """

    name: str
    code: Coding
    unit: str | None
    low: float
    high: float
    description: str
    transform: Transform = "identity"
    categories: tuple[tuple[Coding, float], ...] = field(default=())
    molar_mass: float | None = None

    def model_input(self, value: float) -> float:
        """The model's input for an Observation value in ``unit`` (already range-checked)."""
        return math.log(value) if self.transform == "ln" else value

    def in_range(self, value: float) -> bool:
        return self.low <= value <= self.high


def _loinc(code: str, display: str) -> Coding:
    return Coding(LOINC, code, display)


def _fna(code: str, display: str) -> Coding:
    return Coding(FNA_CYTOLOGY, code, display)


_MG_DL = "mg/dL"

# scikit-learn's load_diabetes(scaled=False), in its column order (Efron et al. 2004).
DIABETES_FEATURES: Final = (
    Feature(
        "age",
        _loinc("30525-0", "Age"),
        "a",
        18,
        100,
        "Age at baseline, in years.",
    ),
    Feature(
        "sex",
        _loinc("46098-0", "Sex"),
        None,
        1,
        2,
        "Sex as coded in the source data (1 or 2). The data set does not document the coding;"
        " 1 = female, 2 = male is inferred from HDL cholesterol being higher in group 1"
        " (54 vs 45 mg/dL), as it is in women.",
        categories=(
            (Coding(ADMINISTRATIVE_GENDER, "female", "Female"), 1.0),
            (Coding(ADMINISTRATIVE_GENDER, "male", "Male"), 2.0),
        ),
    ),
    Feature(
        "bmi",
        _loinc("39156-5", "Body mass index (BMI) [Ratio]"),
        "kg/m2",
        10,
        80,
        "Body mass index.",
    ),
    Feature(
        "bp",
        _loinc("8478-0", "Mean blood pressure"),
        "mm[Hg]",
        40,
        200,
        "Average (mean arterial) blood pressure.",
    ),
    Feature(
        "s1",
        _loinc("2093-3", "Cholesterol [Mass/volume] in Serum or Plasma"),
        _MG_DL,
        50,
        600,
        "Total serum cholesterol (tc).",
        molar_mass=386.65,
    ),
    Feature(
        "s2",
        _loinc("13457-7", "Cholesterol in LDL [Mass/volume] in Serum or Plasma by calculation"),
        _MG_DL,
        10,
        500,
        "LDL cholesterol (ldl); in the source data it is calculated (Friedewald: total - HDL -"
        " triglycerides/5 holds to within 0.4 mg/dL on every row).",
        molar_mass=386.65,
    ),
    Feature(
        "s3",
        _loinc("2085-9", "Cholesterol in HDL [Mass/volume] in Serum or Plasma"),
        _MG_DL,
        5,
        200,
        "HDL cholesterol (hdl).",
        molar_mass=386.65,
    ),
    Feature(
        "s4",
        _loinc("9830-1", "Cholesterol.total/Cholesterol in HDL [Mass Ratio] in Serum or Plasma"),
        "{ratio}",
        1,
        20,
        "Total cholesterol / HDL ratio (tch); often rounded to a whole number in the source.",
    ),
    Feature(
        "s5",
        _loinc("2571-8", "Triglyceride [Mass/volume] in Serum or Plasma"),
        _MG_DL,
        10,
        2000,
        "Serum triglycerides; the model's input is their natural logarithm (ltg). The source"
        " says 'possibly log of serum triglycerides'; exp(ltg) in mg/dL satisfies the"
        " Friedewald relation with tc, ldl and hdl, which confirms ln of mg/dL.",
        transform="ln",
        molar_mass=885.7,
    ),
    Feature(
        "s6",
        _loinc("2345-7", "Glucose [Mass/volume] in Serum or Plasma"),
        _MG_DL,
        20,
        600,
        "Blood glucose (glu).",
        molar_mass=180.156,
    ),
)

_IMAGE_LENGTH = "{image-length}"
_IMAGE_AREA = "{image-area}"

# The ten "worst" features of scikit-learn's load_breast_cancer (columns 20-29): for each
# nuclear characteristic, the mean of the three largest values in the image.
BREAST_CANCER_FEATURES: Final = (
    Feature(
        "worst radius",
        _fna("worst-radius", "Nuclear radius, worst (mean of the 3 largest)"),
        _IMAGE_LENGTH,
        1,
        60,
        "Mean distance from the nucleus centre to its perimeter, worst three nuclei.",
    ),
    Feature(
        "worst texture",
        _fna("worst-texture", "Nuclear texture, worst (mean of the 3 largest)"),
        "{gray-level}",
        1,
        80,
        "Standard deviation of grey-scale values inside the nucleus, worst three nuclei.",
    ),
    Feature(
        "worst perimeter",
        _fna("worst-perimeter", "Nuclear perimeter, worst (mean of the 3 largest)"),
        _IMAGE_LENGTH,
        5,
        400,
        "Nuclear perimeter, worst three nuclei.",
    ),
    Feature(
        "worst area",
        _fna("worst-area", "Nuclear area, worst (mean of the 3 largest)"),
        _IMAGE_AREA,
        10,
        8000,
        "Nuclear area, worst three nuclei.",
    ),
    Feature(
        "worst smoothness",
        _fna("worst-smoothness", "Nuclear smoothness, worst (mean of the 3 largest)"),
        "1",
        0,
        0.5,
        "Local variation in radius lengths, worst three nuclei.",
    ),
    Feature(
        "worst compactness",
        _fna("worst-compactness", "Nuclear compactness, worst (mean of the 3 largest)"),
        "1",
        0,
        2,
        "Perimeter^2 / area - 1, worst three nuclei.",
    ),
    Feature(
        "worst concavity",
        _fna("worst-concavity", "Nuclear concavity, worst (mean of the 3 largest)"),
        "1",
        0,
        2,
        "Severity of concave portions of the contour, worst three nuclei.",
    ),
    Feature(
        "worst concave points",
        _fna("worst-concave-points", "Nuclear concave points, worst (mean of the 3 largest)"),
        "1",
        0,
        0.5,
        "Concave portions of the contour (normalised count), worst three nuclei.",
    ),
    Feature(
        "worst symmetry",
        _fna("worst-symmetry", "Nuclear symmetry, worst (mean of the 3 largest)"),
        "1",
        0,
        1,
        "Nuclear symmetry, worst three nuclei.",
    ),
    Feature(
        "worst fractal dimension",
        _fna("worst-fractal-dimension", "Nuclear fractal dimension, worst (mean of the 3 largest)"),
        "1",
        0,
        0.5,
        "Coastline approximation of the contour - 1, worst three nuclei.",
    ),
)
