"""The data plane: slot KV cache, model runner, verification, proposers and the speculative engine."""
