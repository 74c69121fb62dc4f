"""Interlace: a FHIR-native interoperability facade server."""
