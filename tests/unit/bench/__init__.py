"""Unit tests of the load generator and sweep helpers (bench/)."""
