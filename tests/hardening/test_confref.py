"""The configuration reference: docs/CONFIGURATION.md is exactly what the code generates (every flag,
environment variable and rules field with its default and meaning), so a new or changed setting without
a doc fails here, in CI. Also: every environment variable the product reads is in settings.SETTINGS, every
default config_from uses comes from there, and `cache-proxy --version` / `config-reference` work."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from proxy.ops.parser import build_parser, version
from proxy.serve.config import Config, config_from
from proxy.core.settings import SETTINGS, SETTINGS_BY_NAME
from proxy.ops.confref import RULE_FIELD_DOCS, reference
from proxy.core.rulesfile import RULE_FIELDS

from .conftest import ROOT, subprocess_env

DOC = ROOT / "docs" / "CONFIGURATION.md"
READS = [re.compile(p) for p in (
    r"""environ(?:\.get)?[\[(]\s*["']([A-Z][A-Z0-9_]+)["']""",
    r"""\benv(?:\.get)?[\[(]\s*["']([A-Z][A-Z0-9_]+)["']""",
    r"""setting(?:_float|_int|_bool)?\(\s*\w+,\s*["']([A-Z][A-Z0-9_]+)["']""",
    r"""_values\(\s*\w+,\s*["']([A-Z][A-Z0-9_]+)["']""",
    r"""env_float\(\s*\w+,\s*["']([A-Z][A-Z0-9_]+)["']""",
)]


def test_the_checked_in_reference_is_the_generated_one():
    generated = reference()
    assert DOC.read_text() == generated, (
        "docs/CONFIGURATION.md is out of date: run `cache-proxy config-reference > docs/CONFIGURATION.md`")


def test_every_environment_variable_read_by_the_product_is_documented():
    read: set[str] = set()
    for path in (ROOT / "proxy").rglob("*.py"):
        text = path.read_text()
        for pattern in READS:
            read.update(pattern.findall(text))
        if "_values(" in text:  # identity: NAME and NAME_FILE
            read.update(f"{name}_FILE" for name in re.findall(r"""_values\(\s*\w+,\s*["']([A-Z_]+)["']""", text))
    assert read, "the scan found nothing: the patterns are stale"
    assert read - set(SETTINGS_BY_NAME) == set(), "read but not in settings.SETTINGS (so not in the reference)"
    documented = reference()
    assert all(f"`{s.name}`" in documented for s in SETTINGS)


def test_config_from_takes_its_defaults_from_the_table():
    args = SimpleNamespace(upstream="http://backend:8000", rules=None, listen=None, redis=None, log_format=None)
    config = config_from(args, {})
    assert config.listen == SETTINGS_BY_NAME["LISTEN"].default
    assert config.store_timeout == float(SETTINGS_BY_NAME["STORE_TIMEOUT"].default)
    assert config.upstream.max_concurrent == int(SETTINGS_BY_NAME["MAX_UPSTREAM"].default)
    assert config.max_inflight == int(SETTINGS_BY_NAME["MAX_INFLIGHT"].default)
    assert config.admin_listen is None and config.redis_url is None
    changed = config_from(args, {"LISTEN": "127.0.0.1:9", "MAX_INFLIGHT": "7", "ADMIN_LISTEN": "127.0.0.1:10",
                                 "UPSTREAM_QUEUE_TIMEOUT": "0.5", "REQUIRE_UPSTREAM_AT_START": "1"})
    assert (changed.listen, changed.max_inflight, changed.admin_listen) == ("127.0.0.1:9", 7, "127.0.0.1:10")
    assert changed.upstream.queue_timeout == 0.5 and changed.upstream.require_at_start is True
    assert isinstance(config, Config)


def test_every_flag_and_rules_field_is_in_the_reference():
    documented = reference()
    parser = build_parser()
    for action in parser._subparsers._group_actions[0].choices["serve"]._actions:  # noqa: SLF001
        for option in action.option_strings:
            if option not in ("-h", "--help"):
                assert f"`{option}" in documented, option
    assert set(RULE_FIELD_DOCS) == RULE_FIELDS
    for field in RULE_FIELDS:
        assert f"| `{field}` |" in documented


def test_cli_version_and_config_reference():
    env = subprocess_env()
    out = subprocess.run([sys.executable, "-m", "proxy", "--version"], capture_output=True, text=True, env=env,
                         timeout=60, cwd="/")
    assert out.returncode == 0 and out.stdout.strip() == f"cache-proxy {version()}"
    out = subprocess.run([sys.executable, "-m", "proxy", "config-reference"], capture_output=True, text=True,
                         env=env, timeout=60, cwd="/")
    assert out.returncode == 0 and out.stdout == DOC.read_text() and out.stderr == ""
