"""The orchestrator: takes generate commands from the work queue and runs the phases."""
