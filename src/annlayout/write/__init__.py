"""Writing: the write_dispatched callback, plan -> array keyword arguments, second orientations."""
