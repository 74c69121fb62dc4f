"""Interlace adapters."""
