"""Host side of the fleet: serving package chunks (and, later, deploys, rollouts and telemetry)."""
