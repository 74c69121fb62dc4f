"""Small HL7v2 messages for the ingest tests (made up: no real patient data)."""

from __future__ import annotations


def adt_a01(control_id: str = "CTRL0001", *, mrn: str = "MRN1001", visit: str = "V5001", extra_msh: str = "") -> bytes:
    lines = [
        f"MSH|^~\\&|SENDAPP|SENDFAC|INTERLACE|HOSP|20240102030405||ADT^A01^ADT_A01|{control_id}|P|2.5{extra_msh}",
        "EVN|A01|20240102030405",
        f"PID|1||{mrn}^^^HOSP^MR||Doe^Jane^Q||19800101|F|||1 Main St^^Springfield^IL^62701",
        f"PV1|1|I|WARD1^101^A||||1234^Smith^John|||MED||||||||IP|{visit}^^^HOSP^VN|||||||||||||||||||||||||20240102030000",
    ]
    return ("\r".join(lines) + "\r").encode("ascii")


def oru_r01(control_id: str = "CTRL0100", *, mrn: str = "MRN1001", filler: str = "F9001") -> bytes:
    lines = [
        f"MSH|^~\\&|LAB|SENDFAC|INTERLACE|HOSP|20240103040506||ORU^R01^ORU_R01|{control_id}|P|2.5.1",
        f"PID|1||{mrn}^^^HOSP^MR||Doe^Jane||19800101|F",
        f"OBR|1|P7001^HOSP|{filler}^LAB|24331-1^Lipid panel^LN|||20240103040000|||||||||||||||20240103040500|||F",
        "OBX|1|NM|2093-3^Cholesterol^LN||196|mg/dL|<200||||F|||20240103040000",
        "OBX|2|NM|2571-8^Triglycerides^LN||150|mg/dL|<150|H|||F|||20240103040000",
        "OBX|3|ST|13457-7^LDL calc^LN||see note||||||F",
    ]
    return ("\r".join(lines) + "\r").encode("ascii")


def unsupported_event(control_id: str = "CTRL0200") -> bytes:
    return (
        f"MSH|^~\\&|SENDAPP|SENDFAC|INTERLACE|HOSP|20240102030405||ADT^A99|{control_id}|P|2.5\r"
        "PID|1||MRN1^^^HOSP^MR||Doe^Jane\r"
    ).encode("ascii")


def bad_content(control_id: str = "CTRL0300") -> bytes:
    """Parses and is supported, but the mapping rejects it (a PID without any identifier)."""
    return (
        f"MSH|^~\\&|SENDAPP|SENDFAC|INTERLACE|HOSP|20240102030405||ADT^A01^ADT_A01|{control_id}|P|2.5\r"
        "EVN|A01|20240102030405\r"
        "PID|1||||Doe^Jane\r"
        "PV1|1|I\r"
    ).encode("ascii")


NOT_HL7 = b"this is not an HL7 message at all"
