"""Model artefacts: the pinned real pair (fetch + convert), tiny test pairs, and loading."""
