"""h-space attribute probes: per-timestep linear heads on h, trained from pseudo-labelled samples."""
