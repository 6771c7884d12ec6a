"""`make bench`: what durability costs, measured against the engine's floor in the same run."""
