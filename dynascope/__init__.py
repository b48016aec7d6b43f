"""The `dynascope` command: serve, worker, submit, jobs, cancel."""
