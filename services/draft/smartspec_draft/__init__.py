"""smartspec draft service: a gRPC proposer driven by target replicas over bidirectional streams."""
