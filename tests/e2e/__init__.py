"""End-to-end tests: real Docker engines, real containers, real mini-ipam driver processes."""
