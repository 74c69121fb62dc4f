"""MLLP transport tests."""
