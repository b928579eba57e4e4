"""Moved to `runtime.processes` (process plumbing is not ML); kept for datacenter/server.py's import."""

from runtime.processes import pid_alive

__all__ = ["pid_alive"]
