"""Planning: the survey of a store, the plan, codecs and the memory model (every budget formula)."""
