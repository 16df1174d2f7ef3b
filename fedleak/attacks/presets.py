"""Named gradient-matching attacks (filled in by the engine)."""
