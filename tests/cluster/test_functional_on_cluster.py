"""Functional suites re-run on the Redis Cluster store (``make_store`` of ``tests/cluster/conftest.py``):
every write rule of rules.yaml purges what it must and nothing else, with each user's keys on one
primary and the global namespace on another (``test_purges``); the fill race stays closed when the
fill guard runs on a cluster node (``test_fill_race``)."""
from tests.functional.test_fill_race import *  # noqa: F401,F403
from tests.functional.test_purges import *  # noqa: F401,F403
