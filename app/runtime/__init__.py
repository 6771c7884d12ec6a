"""The runtime: machines as data, the engine that runs them in Restate, the tool client, serving."""
