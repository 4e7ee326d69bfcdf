"""Reliability tests: crashes (SIGKILL), concurrent writer processes, hostile and broken input."""
