"""README tables rendered from the code, so each fact lives in one place.

    .venv/bin/python -m flnorm.docs            # print the tables
    .venv/bin/python -m flnorm.docs --write    # replace them in README.md

Each table sits in the README between ``<!-- NAME -->`` and ``<!-- /NAME -->``; a test
fails when the README's copy differs from the rendering.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

from flnorm.config import ExperimentConfig
from flnorm.protocol import (
    ACCEPTED, BN_LOCAL, CONTRACTS, EXPERIMENT, INSTRUCTION_KEYS, INSTRUCTIONS, MESSAGE_TYPES, MODEL,
    SERVER_ROUND,
)

README = Path(__file__).resolve().parents[1] / "README.md"
GROUP_TITLES = {"experiment": "experiment", "strategy": "strategy parameter", "execution": "execution"}


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def flag_table() -> str:
    """Every ``flnorm run`` flag (= run-config key) with its default, group and help."""
    defaults = ExperimentConfig()
    rows = ["| flag / run-config key | default | group | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(ExperimentConfig):
        default = getattr(defaults, f.name)
        shown = "''" if default == "" else str(default).lower() if isinstance(default, bool) else str(default)
        help_text = _cell(f.metadata["help"])
        rows.append(f"| `--{f.name.replace('_', '-')}` | `{shown}` | {GROUP_TITLES[f.metadata['group']]} | "
                    f"{help_text} |")
    return "\n".join(rows)


def contract_table() -> str:
    """Per strategy: what its messages carry (``flnorm.protocol.CONTRACTS``)."""
    rows = [
        "| strategy | what it is | stays on the client | BN statistics on the server | "
        "train instructions | other messages |",
        "|---|---|---|---|---|---|",
    ]
    for c in CONTRACTS.values():
        train = "; ".join(f"`{k}` ({when})" for k, when in c.train) or "—"
        queries = "; ".join(f"`{t}` ({when})" for t, when in c.queries) or "—"
        cells = [f"`{c.name}`", c.summary, BN_LOCAL[c.bn_local], c.statistics, train, queries]
        rows.append("| " + " | ".join(_cell(x) for x in cells) + " |")
    return "\n".join(rows)


def message_table() -> str:
    """Message types and instruction keys: what a client does with each."""
    rows = ["| message type or key | what a client does with it |", "|---|---|"]
    for kind, what in MESSAGE_TYPES.items():
        accepted = ", ".join(f"`{k}`" for k in sorted(ACCEPTED[kind]))
        rows.append(f"| `{kind}` message | {_cell(what)}; instructions accepted: {accepted} |")
    for key, what in INSTRUCTION_KEYS.items():
        rows.append(f"| `{key}` instruction | {_cell(what)} |")
    rows.append(f"| `{EXPERIMENT}` record | builds its data, model and training from it (every field but the "
                f"strategy parameters); the same in every message of a run |")
    rows.append(f"| `{MODEL}` record | loads it (less what stays on the client) |")
    rows.append(f"| `{INSTRUCTIONS}` record | refuses any key its message type does not accept; "
                f"`{SERVER_ROUND}` is always there |")
    return "\n".join(rows)


TABLES = {"flags": flag_table, "contract": contract_table, "messages": message_table}


def section(text: str, name: str) -> str:
    """The README's copy of table ``name``."""
    match = re.search(rf"<!-- {name} -->\n(.*?)<!-- /{name} -->", text, re.S)
    if not match:
        raise ValueError(f"README has no <!-- {name} --> ... <!-- /{name} --> block")
    return match.group(1).rstrip("\n")


def write(path: Path = README) -> None:
    text = path.read_text()
    for name, render in TABLES.items():
        section(text, name)
        text = re.sub(rf"(<!-- {name} -->\n).*?(<!-- /{name} -->)",
                      lambda m: m.group(1) + render() + "\n" + m.group(2), text, flags=re.S)
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="replace the tables in README.md")
    args = parser.parse_args()
    if args.write:
        write()
    else:
        for name, render in TABLES.items():
            print(f"<!-- {name} -->\n{render()}\n<!-- /{name} -->\n")


if __name__ == "__main__":
    main()
