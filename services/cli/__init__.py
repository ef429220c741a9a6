"""The `kiln` command: run Kiln (`up`, one service each) and talk to it."""
