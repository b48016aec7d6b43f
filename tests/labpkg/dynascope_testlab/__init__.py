"""A lab's own models and data, for Dynascope's tests of entry points."""
