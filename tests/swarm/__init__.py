"""Swarm tier: mini-ipam as a managed (v2) plugin on real swarm nodes, overlay networks, the global space."""
