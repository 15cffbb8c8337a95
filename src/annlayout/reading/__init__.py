"""Reading: open() and its datasets, matrices and frames; the training loader."""
