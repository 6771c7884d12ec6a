"""The production restate-server configuration (deploy/k8s/base/restate.toml): the server takes it,
and every key it sets is one the server knows. restate-server ignores a key it does not know, so
a misspelt one would silently fall back to a default: each is looked up in `--dump-config`."""

from __future__ import annotations

import re
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from deploy.cluster import PRODUCTION_CONFIG
from deploy.local import RESTATE_CONFIG, RESTATE_SERVER_BIN


def effective(config: Path, cwd: Path) -> dict[str, Any]:
    dumped = subprocess.run(
        [str(RESTATE_SERVER_BIN), "--config-file", str(config), "--dump-config"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert dumped.returncode == 0, dumped.stderr
    return tomllib.loads(dumped.stdout)


def leaves(table: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in table.items():
        if isinstance(value, dict):
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def lookup(table: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        table = table[part]
    return table


def normal(value: Any) -> Any:
    """The dump writes sizes with one decimal ("3.0 GiB") and lists of roles in its own order."""
    if isinstance(value, str):
        return re.sub(r"^(\d+) (KiB|MiB|GiB)$", r"\1.0 \2", value)
    if isinstance(value, list):
        return sorted(value)
    return value


def unknown_keys(config: Path, cwd: Path) -> list[str]:
    """The keys of `config` the server does not have with the value written."""
    dumped = effective(config, cwd)
    unknown = []
    for key, value in leaves(tomllib.loads(config.read_text())):
        try:
            if normal(lookup(dumped, key)) != normal(value):
                unknown.append(f"{key}: wrote {value!r}, the server has {lookup(dumped, key)!r}")
        except KeyError:
            unknown.append(f"{key}: unknown to the server")
    return unknown


def test_every_key_of_both_configurations_is_one_the_server_knows(tmp_path: Path) -> None:
    assert unknown_keys(PRODUCTION_CONFIG, tmp_path) == []
    assert unknown_keys(RESTATE_CONFIG, tmp_path) == []


def test_a_misspelt_key_is_caught(tmp_path: Path) -> None:
    config = tmp_path / "restate.toml"
    config.write_text('default-replicaton = 2\n[worker.invoker]\ninactivity-timeout = "1m"\n')
    assert unknown_keys(config, tmp_path) == ["default-replicaton: unknown to the server"]


def test_production_replicates_and_never_provisions_on_its_own(tmp_path: Path) -> None:
    dumped = effective(PRODUCTION_CONFIG, tmp_path)
    assert dumped["auto-provision"] is False
    assert dumped["default-replication"] == 2
    assert dumped["bifrost"]["default-provider"] == "replicated"
    assert dumped["metadata-client"]["type"] == "replicated"
    assert dumped["worker"]["invoker"]["request-identity-private-key-pem-file"]
