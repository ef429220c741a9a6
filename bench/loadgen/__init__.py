"""Load generators: separate processes, driven over stdin/stdout by `workers.Worker`."""
