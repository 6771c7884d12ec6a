"""Human-in-the-loop: approval gates, their arbiter, the signed webhook and the operator inbox."""
