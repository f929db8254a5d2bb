"""``taskapp plugins``: list installed plugins and what they provide."""

from __future__ import annotations

import argparse
import importlib.util
import json
from typing import Any

EPILOG = """examples:
  taskapp plugins              third-party plugins, and any that failed to load
  taskapp plugins --all        builtins too
  taskapp plugins --all --json  machine-readable
"""


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "plugins",
        help="list plugins: name, version, hooks, servers and tunnels provided, load errors",
        description="List taskapp plugins found through the 'taskapp' entry-point group.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--all", action="store_true", help="include builtin plugins")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from taskapp.core.plugins import get_registry

    registry = get_registry()
    rows = registry.describe(include_builtins=args.all)
    for row in rows:
        row["needs"] = {
            name: NEEDS[name][1]
            for name in (*(row.get("servers") or ()), *(row.get("tunnels") or ()))
            if name in NEEDS and importlib.util.find_spec(NEEDS[name][0]) is None
        }
    status = 1 if any(row["error"] for row in rows) else 0
    if args.json:
        print(json.dumps(rows, indent=2))
        return status
    if not rows:
        print("no third-party plugins installed (use --all to list the builtins)")
    for row in rows:
        version = f" {row['version']}" if row["version"] else ""
        origin = f" [{row['distribution']}{version}]" if row["distribution"] else ""
        print(f"{row['name']}{origin}")
        if row["error"]:
            print(f"    FAILED TO LOAD: {row['error']}")
            continue
        needs = row["needs"]
        if row["servers"]:
            print(f"    servers: {', '.join(_mark(name, needs) for name in row['servers'])}")
        if row["tunnels"]:
            print(f"    tunnels: {', '.join(_mark(name, needs) for name in row['tunnels'])}")
        if row["loader"]:
            print("    loader: load_app")
        print(f"    hooks:   {', '.join(row['hooks'])}")
    return status


#: builtin backends that need an optional extra: name -> (module, what to install)
NEEDS: dict[str, tuple[str, str]] = {
    "ray": ("ray", "taskapp[ray]"),
    "synthtunnel": ("websockets", "taskapp[relay]"),
    "relay": ("websockets", "taskapp[relay]"),
}


def _mark(name: str, needs: dict[str, str]) -> str:
    return f"{name} (needs {needs[name]})" if name in needs else name
