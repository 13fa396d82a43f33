"""Telemetry: the services' metrics as OpenTelemetry instruments, also served as Prometheus text."""
