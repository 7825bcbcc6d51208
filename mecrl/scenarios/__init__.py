"""Built-in scenario configs, one YAML file per scenario."""
