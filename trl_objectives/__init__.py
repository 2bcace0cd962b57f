"""trl_objectives."""
