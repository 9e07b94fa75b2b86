"""Refinery collector agents: the process that runs beside a robot."""
