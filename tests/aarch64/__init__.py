"""The aarch64 harness (tests/test_aarch64.py) and the compiler checks; see README.md here."""
