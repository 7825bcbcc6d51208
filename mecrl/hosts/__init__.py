"""Real hosts: the host agent, the real backend, its journal, calibration.

| module | what |
|---|---|
| :mod:`mecrl.hosts.config` | the agent's config file |
| :mod:`mecrl.hosts.containerd` | containerd through ``ctr``; checkpoint images |
| :mod:`mecrl.hosts.netns` | addresses, routes, drops and probes in a namespace |
| :mod:`mecrl.hosts.agent` | what the agent's API does |
| :mod:`mecrl.hosts.server` | the agent's HTTP server |
| :mod:`mecrl.hosts.client` | a client of the agent's API |
| :mod:`mecrl.hosts.journal` | the append-only, fsync'd migration journal |
| :mod:`mecrl.hosts.migrate` | make-before-break migration, rollback, recovery |
| :mod:`mecrl.hosts.backend` | the real backend and its hosts file |
| :mod:`mecrl.hosts.calibrate` | fitting the runc profile to measured moves |
| :mod:`mecrl.hosts.cli` | ``mecrl host-agent`` and ``mecrl calibrate`` |
"""
