"""Interlace mllp."""
