"""Edge hosts and a user as network namespaces on one machine, with containerd.

``Testbed.up(spec, workdir)`` builds it, ``Testbed.down()`` (or
``mecrl testbed down``) removes it; see :mod:`mecrl.testbed.testbed`.
"""

from mecrl.testbed.spec import HostSpec, LinkSpec, TestbedSpec, UserSpec
from mecrl.testbed.testbed import Testbed, TestbedHost, teardown

__all__ = [
    "HostSpec",
    "LinkSpec",
    "Testbed",
    "TestbedHost",
    "TestbedSpec",
    "UserSpec",
    "teardown",
]
