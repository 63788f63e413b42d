"""Which file-system changes can change the rules file: the filter of the rules watcher.

The watcher watches the rules file's directory, not the file, because editors and Kubernetes ConfigMaps
replace a file (rename, symlink swap) rather than write into it. Everything else in that directory (the
proxy's own log file, an editor's swap files) is not a change of the rules: counting it would make a log
file kept beside rules.yaml feed the watcher forever. Pure: no watching happens here.
"""
from __future__ import annotations

import os

# Kubernetes mounts a ConfigMap as `rules.yaml -> ..data/rules.yaml`, `..data -> ..<timestamp>/`, and
# updates it by swapping the `..data` link: the names that change then are those dot-dot entries.
_CONFIGMAP_PREFIX = ".."


class RulesFileChanges:
    """A ``watch_filter`` for watchfiles: True for a change that may have changed the rules file."""

    def __init__(self, rules_path: str) -> None:
        self.directory = os.path.dirname(os.path.abspath(rules_path))
        self.name = os.path.basename(rules_path)

    def __call__(self, _change: object, path: str) -> bool:
        directory, name = os.path.split(os.path.abspath(path))
        if directory != self.directory:
            return False
        return name == self.name or name.startswith(_CONFIGMAP_PREFIX)
