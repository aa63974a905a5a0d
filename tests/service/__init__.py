"""Tests of the HTTP service against a real server (see conftest.py)."""
