"""Shared helpers for the infra tests: they read the repository's files and
check that the container image, Bicep, Dapr resources, workflow and docs agree
with each other, with spin.toml and with the host's CLI."""
from __future__ import annotations

import re
import shlex
import tomllib
from functools import lru_cache
from pathlib import Path

import pytest
import yaml
from pycep import BicepParser

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"


@lru_cache(maxsize=None)
def bicep(path: str) -> dict:
    return BicepParser().parse(file_path=INFRA / path)


def bicep_files() -> list[Path]:
    return sorted(INFRA.rglob("*.bicep"))


def bicepparam(path: Path) -> dict[str, str]:
    """`param name = value` lines of a .bicepparam file (values as source text)."""
    params = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^param\s+(\w+)\s*=\s*(.+?)\s*$", line)
        if m:
            params[m.group(1)] = m.group(2)
    return params


@lru_cache(maxsize=None)
def spin_manifest() -> dict:
    return tomllib.loads((REPO / "spin.toml").read_text())


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def fenced_commands(markdown: Path) -> list[list[str]]:
    """Shell commands inside ``` fences, continuation lines joined, tokenized."""
    commands, in_fence, pending = [], False, ""
    for line in markdown.read_text().splitlines():
        if line.lstrip().startswith("```"):
            in_fence, pending = not in_fence, ""
            continue
        if not in_fence:
            continue
        text = pending + line.strip()
        if text.endswith("\\"):
            pending = text[:-1] + " "
            continue
        pending = ""
        if text and not text.startswith("#"):
            try:
                commands.append(shlex.split(text, comments=True))
            except ValueError:
                continue
    return commands


def wasmshop_up_commands(tokens_list: list[list[str]]) -> list[list[str]]:
    """The `wasmshop up ...` part of each command (also after `dapr run ... --`)."""
    found = []
    for tokens in tokens_list:
        for i, tok in enumerate(tokens[:-1]):
            if tok.endswith("wasmshop") and tokens[i + 1] == "up":
                found.append(tokens[i:])
                break
    return found


def flags_of(tokens: list[str]) -> dict[str, str | None]:
    """--flag value / --flag=value pairs of a tokenized command."""
    flags: dict[str, str | None] = {}
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok == "--":
            break
        if tok.startswith("--"):
            name, eq, value = tok[2:].partition("=")
            if not eq and i + 1 < len(tokens) and not tokens[i + 1].startswith("-"):
                value = tokens[i + 1]
                i += 1
            flags[name] = value if (eq or value) else None
        i += 1
    return flags


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO
