"""Default budgets and sizes, in one place: plain values, no imports.

The CLI's option defaults, the Python API's keyword defaults and the memory model
(:mod:`annlayout.planning.memory`) all read these, so ``--help`` and the code cannot disagree.
Kept free of imports so that the CLI can name them in its decorators without slowing its start.
"""

#: ``apply --memory``: holds a 512 MiB shard (the archive layout) with room to encode it.
MEMORY = "2GiB"
#: ``verify --memory`` (and ``annlayout.verify``): blocks compared at once, both sides.
VERIFY_MEMORY = "512MiB"
#: ``apply --whole-below``: smaller elements go through anndata whole (strings, uns, ...).
WHOLE_BELOW = "16MiB"
#: ``batches(memory=)``: the training loader's buffers in flight (consumed, read ahead, being
#: made): 3 buffers of 64k cells at 300 nonzeros each, with room to spare.
LOADER_MEMORY = "1GiB"

__all__ = ["LOADER_MEMORY", "MEMORY", "VERIFY_MEMORY", "WHOLE_BELOW"]
