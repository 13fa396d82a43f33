"""smartspec target service: the engine behind gRPC Generate and the OpenAI-compatible HTTP API."""
