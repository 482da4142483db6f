"""Speculation: predict soon-served (user, item) pairs, precompute their FM pair representations, account."""
