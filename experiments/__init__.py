"""Jobs that reproduce reported figures; run them from the repository root."""
