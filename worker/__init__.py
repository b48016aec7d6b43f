"""Dynascope worker: trains models and runs the analyses. May import backend; backend never imports it."""
