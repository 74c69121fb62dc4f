"""Interlace hl7v2."""
