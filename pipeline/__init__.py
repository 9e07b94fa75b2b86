"""Refinery: the ingest, raw store, wire protocol and processing side."""


def refinery_version() -> str:
    """The installed version of the ``teleop-refinery`` distribution."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("teleop-refinery")
    except PackageNotFoundError:
        return "(not installed)"
