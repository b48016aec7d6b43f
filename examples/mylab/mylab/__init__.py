"""A lab's own models, for Dynascope server jobs."""
