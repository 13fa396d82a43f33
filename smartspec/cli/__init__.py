"""The `smartspec` command line."""
