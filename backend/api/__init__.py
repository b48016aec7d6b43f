"""The HTTP API: one module of routes per resource, all served under API_PREFIX."""

API_PREFIX = "/api/v1"
