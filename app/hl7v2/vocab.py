"""Vocabulary maps (v2 table code -> FHIR code) as data, after the V2-to-FHIR IG codesystem/ConceptMap CSVs.

Kept small and explicit here; the official v2 tables and ConceptMaps are to be vendored into ``terminology/`` and
served through ``app.fhir`` terminology later (see the package report). Lookups are case-insensitive on the v2 side.
"""

from __future__ import annotations

V2 = "http://terminology.hl7.org/CodeSystem/v2-"
V3_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
V3_MARITAL = "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus"
V3_ROLE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
V3_INTERP = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
V3_NULL = "http://terminology.hl7.org/CodeSystem/v3-NullFlavor"


def v2_table(table: str) -> str:
    return f"{V2}{table.zfill(4)}"


# CWE.3 / CX / HD coding system names -> canonical URIs (HL7 table 0396 names and common aliases).
CODE_SYSTEMS: dict[str, str] = {
    "LN": "http://loinc.org",
    "LOINC": "http://loinc.org",
    "SCT": "http://snomed.info/sct",
    "SNM": "http://snomed.info/sct",
    "SNOMED": "http://snomed.info/sct",
    "SNOMEDCT": "http://snomed.info/sct",
    "I10": "http://hl7.org/fhir/sid/icd-10",
    "I10C": "http://hl7.org/fhir/sid/icd-10-cm",
    "ICD10CM": "http://hl7.org/fhir/sid/icd-10-cm",
    "I10P": "http://www.cms.gov/Medicare/Coding/ICD10",
    "I9": "http://hl7.org/fhir/sid/icd-9-cm",
    "I9C": "http://hl7.org/fhir/sid/icd-9-cm",
    "I9CDX": "http://hl7.org/fhir/sid/icd-9-cm",
    "C4": "http://www.ama-assn.org/go/cpt",
    "C5": "http://www.ama-assn.org/go/cpt",
    "CPT": "http://www.ama-assn.org/go/cpt",
    "CPT4": "http://www.ama-assn.org/go/cpt",
    "HCPCS": "urn:oid:2.16.840.1.113883.6.285",
    "HCPT": "urn:oid:2.16.840.1.113883.6.285",
    "CVX": "http://hl7.org/fhir/sid/cvx",
    "MVX": "http://terminology.hl7.org/CodeSystem/MVX",
    "NDC": "http://hl7.org/fhir/sid/ndc",
    "RXNORM": "http://www.nlm.nih.gov/research/umls/rxnorm",
    "RXN": "http://www.nlm.nih.gov/research/umls/rxnorm",
    "UCUM": "http://unitsofmeasure.org",
    "UCUM1": "http://unitsofmeasure.org",
    "ISO+": "urn:iso:std:iso:2955",
    "ANS+": "http://unitsofmeasure.org",
    "NCIT": "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl",
    "CDCREC": "urn:oid:2.16.840.1.113883.6.238",
    "CDCPHINVS": "urn:oid:2.16.840.1.114222.4.5.274",
    "ISO3166_1": "urn:iso:std:iso:3166",
    "ISO3166_2": "urn:iso:std:iso:3166:-2",
    "ISO639": "urn:ietf:bcp:47",
    "NUBC": "https://www.nubc.org/CodeSystem/PatDischargeStatus",
    "NPI": "http://hl7.org/fhir/sid/us-npi",
    "UPIN": "urn:oid:2.16.840.1.113883.4.8",
    "SSN": "http://hl7.org/fhir/sid/us-ssn",
}

# v2 user/HL7 tables referenced by name, e.g. "HL70001" or "HL7nnnn".
HL7_TABLE_PREFIX = "HL7"

# 0001 Administrative Sex -> FHIR AdministrativeGender (IG ConceptMap v2-0001).
GENDER: dict[str, str] = {"F": "female", "M": "male", "O": "other", "U": "unknown", "A": "other", "N": "other"}

# 0002 Marital Status -> v3 MaritalStatus (IG ConceptMap).
MARITAL: dict[str, tuple[str, str]] = {
    "A": ("L", "Legally Separated"),
    "D": ("D", "Divorced"),
    "M": ("M", "Married"),
    "S": ("S", "Never Married"),
    "W": ("W", "Widowed"),
    "C": ("C", "Common Law"),
    "G": ("T", "Domestic partner"),
    "P": ("T", "Domestic partner"),
    "R": ("T", "Domestic partner"),
    "E": ("L", "Legally Separated"),
    "N": ("A", "Annulled"),
    "I": ("I", "Interlocutory"),
    "B": ("U", "unmarried"),
    "U": ("UNK", "unknown"),
    "O": ("OTH", "other"),
    "T": ("UNK", "unknown"),
}

# 0004 Patient Class -> v3 ActCode (Encounter.class).
ENCOUNTER_CLASS: dict[str, tuple[str, str]] = {
    "E": ("EMER", "emergency"),
    "I": ("IMP", "inpatient encounter"),
    "O": ("AMB", "ambulatory"),
    "P": ("PRENC", "pre-admission"),
    "R": ("IMP", "inpatient encounter"),
    "B": ("OBSENC", "observation encounter"),
    "C": ("AMB", "ambulatory"),
    "N": ("AMB", "ambulatory"),  # "not applicable": FHIR requires a class
    "U": ("AMB", "ambulatory"),
}

# Event -> Encounter.status (IG message maps; PV1-45 valued always means finished).
ENCOUNTER_STATUS_BY_EVENT: dict[str, str] = {
    "A01": "in-progress",
    "A02": "in-progress",
    "A03": "finished",
    "A04": "arrived",
    "A05": "planned",
    "A06": "in-progress",
    "A07": "in-progress",
    "A09": "in-progress",
    "A10": "in-progress",
    "A11": "cancelled",
    "A15": "in-progress",
    "A16": "in-progress",
    "A25": "in-progress",
    "A26": "in-progress",
    "A27": "cancelled",
    "A13": "in-progress",
    "A14": "planned",
    "A38": "cancelled",
}

# 0063 Relationship -> v3 RoleCode (NK1-3, IN1-17 uses 0063 too in 2.5+).
RELATIONSHIP: dict[str, str] = {
    "SEL": "ONESELF",
    "SPO": "SPS",
    "DOM": "DOMPART",
    "CHD": "CHILD",
    "GCH": "GRNDCHILD",
    "NCH": "NCHILD",
    "SCH": "STPCHLD",
    "FCH": "CHLDFOST",
    "DEP": "DEPEN",
    "WRD": "WARD",
    "PAR": "PRN",
    "MTH": "MTH",
    "FTH": "FTH",
    "CGV": "CAREGIVER",
    "GRD": "GUARD",
    "GRP": "GRPRN",
    "EXF": "EXT",
    "SIB": "SIB",
    "BRO": "BRO",
    "SIS": "SIS",
    "FND": "FRND",
    "OAD": "ADULTDTR",
    "EME": "EMP",
    "EMR": "ERR",
    "ASC": "ASSOC",
    "EMC": "ECON",
    "OWN": "OWN",
    "TRA": "TRAINER",
    "MGR": "MGR",
    "NON": "NONE",
    "UNK": "UNK",
    "OTH": "OTH",
}

# 0078 Abnormal flags -> v3 ObservationInterpretation (same letters except where noted).
INTERPRETATION: dict[str, str] = {
    "L": "L",
    "H": "H",
    "LL": "LL",
    "HH": "HH",
    "<": "<",
    ">": ">",
    "N": "N",
    "A": "A",
    "AA": "AA",
    "U": "U",
    "D": "D",
    "B": "B",
    "W": "W",
    "S": "S",
    "R": "R",
    "I": "I",
    "MS": "MS",
    "VS": "VS",
    "POS": "POS",
    "NEG": "NEG",
    "IND": "IND",
    "DET": "DET",
    "ND": "ND",
    "AC": "A",
    "RR": "RR",
    "QCF": "QCF",
    "TOX": "TOX",
    "EX": "EX",
    "HX": "HX",
    "LX": "LX",
    "L>": "LU",
    "H>": "HU",
    "NR": "N",
}

# 0085 Observation result status (OBX-11) -> Observation.status.
OBSERVATION_STATUS: dict[str, str] = {
    "C": "corrected",
    "D": "entered-in-error",
    "F": "final",
    "I": "registered",
    "N": "final",  # "not asked": value absent -> dataAbsentReason
    "O": "registered",
    "P": "preliminary",
    "R": "preliminary",
    "S": "preliminary",
    "U": "final",
    "W": "entered-in-error",
    "X": "cancelled",
    "A": "amended",
}

# 0123 Result status (OBR-25) -> DiagnosticReport.status.
REPORT_STATUS: dict[str, str] = {
    "O": "registered",
    "I": "registered",
    "S": "registered",
    "A": "partial",
    "P": "preliminary",
    "R": "partial",
    "N": "partial",
    "C": "corrected",
    "M": "corrected",
    "F": "final",
    "X": "cancelled",
    "Y": "unknown",
    "Z": "unknown",
}

# ORC-5 Order status (0038) -> ServiceRequest.status; wins over ORC-1.
ORDER_STATUS: dict[str, str] = {
    "A": "active",
    "CA": "revoked",
    "CM": "completed",
    "DC": "revoked",
    "ER": "entered-in-error",
    "HD": "on-hold",
    "IP": "active",
    "RP": "revoked",
    "SC": "active",
}

# ORC-1 Order control (0119) -> ServiceRequest.status when ORC-5 is empty.
ORDER_CONTROL_STATUS: dict[str, str] = {
    "NW": "active",
    "RQ": "active",
    "RO": "active",
    "OK": "active",
    "SC": "active",
    "XO": "active",
    "XX": "active",
    "RE": "active",
    "CA": "active",  # a cancel *request*: not yet revoked
    "OC": "revoked",
    "OD": "revoked",
    "DC": "revoked",
    "CR": "revoked",
    "DR": "revoked",
    "DF": "revoked",
    "HD": "on-hold",
    "HR": "on-hold",
    "OH": "on-hold",
    "FU": "completed",
}

# 0278 Filler status (SCH-25) -> Appointment.status.
APPOINTMENT_STATUS: dict[str, str] = {
    "BOOKED": "booked",
    "PENDING": "pending",
    "WAITLIST": "waitlist",
    "STARTED": "checked-in",
    "COMPLETE": "fulfilled",
    "CANCELLED": "cancelled",
    "DC": "cancelled",
    "DELETED": "entered-in-error",
    "BLOCKED": "booked",
    "OVERBOOK": "booked",
    "NOSHOW": "noshow",
}

# 0127 Allergen type (AL1-2) -> AllergyIntolerance.category.
ALLERGY_CATEGORY: dict[str, str] = {
    "DA": "medication",
    "MA": "medication",
    "FA": "food",
    "EA": "environment",
    "PA": "environment",
    "LA": "environment",
    "AA": "biologic",
    "PLANT": "environment",
    "POLLEN": "environment",
    "MC": "medication",
}

# 0128 Allergy severity (AL1-4) -> criticality.
ALLERGY_CRITICALITY: dict[str, str] = {"SV": "high", "MO": "low", "MI": "low", "U": "unable-to-assess"}

# 0201 Telecom use (XTN.2) -> ContactPoint.use; 0202 equipment (XTN.3) -> system.
TELECOM_USE: dict[str, str] = {
    "PRN": "home",
    "ORN": "home",
    "VHN": "home",
    "WPN": "work",
    "PRS": "mobile",
    "EMR": "home",
    "ASN": "temp",
    "BPN": "work",
}
TELECOM_SYSTEM: dict[str, str] = {
    "PH": "phone",
    "CP": "phone",
    "FX": "fax",
    "BP": "pager",
    "MD": "other",
    "TDD": "other",
    "TTY": "other",
    "SAT": "phone",
    "INTERNET": "email",
    "X.400": "email",
}

# 0200 Name type (XPN.7) -> HumanName.use.
NAME_USE: dict[str, str] = {
    "L": "official",
    "D": "usual",
    "M": "maiden",
    "N": "nickname",
    "A": "anonymous",
    "S": "anonymous",
    "BAD": "old",
    "NB": "old",
    "TEMP": "temp",
    "R": "official",
    "C": "official",
    "P": "usual",
}

# 0190 Address type (XAD.7) -> Address.use / Address.type.
ADDRESS_USE: dict[str, str] = {"H": "home", "B": "work", "O": "work", "C": "temp", "BA": "old", "BI": "billing"}
ADDRESS_TYPE: dict[str, str] = {"M": "postal", "SH": "physical", "P": "physical"}

# 0322 Completion status (RXA-20) -> Immunization.status.
IMMUNIZATION_STATUS: dict[str, str] = {"CP": "completed", "PA": "completed", "RE": "not-done", "NA": "not-done"}

# 0271 Document completion status (TXA-17) -> DocumentReference.docStatus.
DOC_STATUS: dict[str, str] = {
    "AU": "final",
    "LA": "final",
    "DI": "preliminary",
    "DO": "preliminary",
    "IP": "preliminary",
    "IN": "preliminary",
    "PA": "preliminary",
    "CA": "entered-in-error",
}

# 0017 Transaction type (FT1-6) -> ChargeItem.status: charges, credits (negative amounts) and adjustments are
# billable lines; a payment is not a charge. The type itself travels in an extension (see segments/ft1.py).
CHARGE_STATUS: dict[str, str] = {"CG": "billable", "CD": "billable", "AJ": "billable", "PY": "not-billable"}
