"""The operator web UI served by the daemon under /ui/ (issue 9): see app.py."""
