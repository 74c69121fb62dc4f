"""Interlace fhir."""
