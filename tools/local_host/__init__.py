"""Local stand-in for the Azure Functions host (queue and timer triggers): ``python -m tools.local_host --help``."""
