"""The production service: the scoring and learning loops and everything they run."""
