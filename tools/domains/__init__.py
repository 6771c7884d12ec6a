"""Tool domains: each package here is one domain, its tables and tools, and the agents it serves.

A domain exposes `TOOLS` (its tools), `AGENTS` (the agents granted them) and optionally
`seed_demo_data` (demo data, inserted where missing at start). The registry finds them: adding a
domain edits no list elsewhere. Domains import the service's modules, never each other.
"""
