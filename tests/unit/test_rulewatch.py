"""Which changes in the rules file's directory the rules watcher counts (proxy/core/rulewatch.py)."""
from __future__ import annotations

import pytest

from proxy.core.rulewatch import RulesFileChanges


@pytest.mark.parametrize("name, counts", [
    ("rules.yaml", True),                   # written in place, or renamed over (editors, os.replace)
    ("..data", True),                       # a ConfigMap's symlink swap
    ("..2026_12_05_12_00_00.123", True),    # a ConfigMap's new version directory
    ("proxy.log", False),                   # the proxy's own log beside the rules: fed the watcher forever
    (".rules.yaml.swp", False),             # an editor's swap file
    ("rules.yaml.tmp", False),
    ("other.yaml", False),
])
def test_only_changes_that_can_change_the_rules_file_count(tmp_path, name, counts):
    changes = RulesFileChanges(str(tmp_path / "rules.yaml"))
    assert changes(None, str(tmp_path / name)) is counts


def test_a_file_of_the_same_name_elsewhere_does_not_count(tmp_path):
    changes = RulesFileChanges(str(tmp_path / "rules.yaml"))
    assert changes(None, str(tmp_path / "sub" / "rules.yaml")) is False
    assert changes.directory == str(tmp_path)
