"""The hardening tier: hostile input, faults and crash safety, measured (issue 8)."""
