"""Local stand-in for the Azure Functions host (queue triggers only): ``python -m tools.local_host --help``."""
