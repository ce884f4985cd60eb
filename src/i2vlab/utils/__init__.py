"""Small shared utilities: video I/O, parameter reports, run metadata."""
