"""Generated protobuf/gRPC code for package smartspec.v1 — do not edit; run scripts/gen_proto.sh."""
