"""Ray Tune sweeps and RLlib: configs, cluster launcher file, examples."""
