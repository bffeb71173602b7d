"""mini-ipam: a Docker remote IPAM driver that hands out free subnets of a requested size."""

__version__ = "0.1.0"
