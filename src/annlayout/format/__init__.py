"""AnnData's on-disk format: encodings, their attributes and legacy forms."""
