"""Library code shared by the top-level scripts (training, evaluation, inference)."""
