"""Load and soak tests for a running cim deployment: ``python -m loadtest.soak`` and ``loadtest/locustfile.py``."""
