"""What both services share: configuration rules and nothing that knows either service."""
