"""Dynascope API: jobs, metrics, results and the dashboard. Never imports torch or worker."""
