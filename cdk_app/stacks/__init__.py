"""Stacks by lifecycle: network and storage stay, download goes after its snapshot, fleet comes and goes."""
