"""The goodput controller: step records and OTLP metrics in, a versioned speculation policy out."""
