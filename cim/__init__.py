"""cim: a horizontally scalable instant-messaging system (CIM, re-created in Python)."""

__version__ = "0.1.0"
