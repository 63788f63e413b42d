"""The L1's invalidation channel on a Redis Cluster: a PUBLISH inside the bump script reaches a
subscriber on any node, so a purge on one instance empties another instance's L1."""
from tests.functional.test_l1 import (  # noqa: F401 - collected here against the cluster store
    test_a_purge_on_another_instance_reaches_this_l1,
    test_own_purge_evicts_before_the_answer,
)
