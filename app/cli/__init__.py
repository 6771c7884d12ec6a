"""agentctl, the operator's command line."""
