"""A Kubernetes API stand-in for tests: real HTTP on loopback, in-memory objects (see server.py)."""
