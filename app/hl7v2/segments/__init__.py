"""One module per v2 segment, each mapping that segment's fields to FHIR after the V2-to-FHIR IG segment maps.

Field positions live only here (never scattered through message handlers). Functions take the parsed Segment and
the per-message Context and return a reference (the Bundle fullUrl) or a FHIR fragment.
"""
