"""Supervisors: run several cim-server workers on one host (``--workers N``)."""

from cim.supervisors.multiprocess import Multiprocess

__all__ = ["Multiprocess"]
