"""Partner Center sandbox emulator: ``python -m tools.pc_emulator --help``."""
