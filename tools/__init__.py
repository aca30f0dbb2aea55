"""Development tools (emulator, local host, demo, reliability run). Never deployed (see .funcignore)."""
