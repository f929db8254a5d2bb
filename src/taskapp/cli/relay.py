"""``taskapp relay``: run a relay (``serve``) or make an admin token (``token``)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any

EPILOG = """examples:
  taskapp relay token > relay.tokens && chmod 600 relay.tokens
  taskapp relay serve --host 127.0.0.1 --port 8787 \\
      --public-url https://relay.example.com --admin-token-file relay.tokens
  TASKAPP_RELAY_ADMIN_TOKEN=... taskapp relay serve --port 8787

Put TLS in front (Caddy or nginx, see docs/relay.md) or pass --ssl-certfile/--ssl-keyfile.
Clients use: InProcessTaskApp(..., tunnel_mode="synthtunnel",
  tunnel_options={"relay_url": "https://relay.example.com", "admin_token_file": "..."})
"""


def _protocols(text: str) -> tuple[int, ...]:
    try:
        versions = tuple(sorted({int(v) for v in text.split(",") if v.strip()}, reverse=True))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--protocols takes 1, 2 or 1,2, got {text!r}") from None
    if not versions or not set(versions) <= {1, 2}:
        raise argparse.ArgumentTypeError(f"--protocols takes 1, 2 or 1,2, got {text!r}")
    return versions


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "relay",
        help="run a self-hosted relay for tunnel_mode='synthtunnel', or make an admin token",
        description="A self-hostable HTTP-over-WebSocket relay (the 'relay' tunnel backend).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="relay_command", metavar="SUBCOMMAND")
    parser.set_defaults(run=run, relay_help=parser.format_help)

    serve = commands.add_parser(
        "serve",
        help="serve the relay (lease API, agent WebSocket, public ingress /s/rt_...)",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from taskapp.cli._common import add_dataclass_options
    from taskapp.relay.server.settings import RelaySettings

    serve.add_argument(
        "--public-url",
        help="the URL clients and agents reach this relay at (default http://HOST:PORT)",
    )
    serve.add_argument(
        "--admin-token-file",
        type=Path,
        help="file with admin tokens, one per line ('name:token' allowed), mode 0600 "
        "(default: the TASKAPP_RELAY_ADMIN_TOKEN environment variable)",
    )
    serve.add_argument(
        "--state-file",
        type=Path,
        help="keep leases (hashes only) in this file so a restart keeps URLs working",
    )
    serve.add_argument(
        "--protocols",
        type=_protocols,
        help="protocol versions offered to agents: 1, 2 or 1,2 (default 1,2; v2 is preferred)",
    )
    serve.add_argument(
        "--trusted-proxy",
        action="append",
        default=None,
        help="address whose X-Forwarded-For is trusted (repeatable; default 127.0.0.1)",
    )
    limits = serve.add_argument_group(
        "limits",
        "sizes take bytes or a unit (65536, 64KiB, 100MB, 1GiB); times are in seconds;\n"
        "each line gives the default and what a caller gets beyond the limit",
    )
    # --host, --port, the limits and --ssl-*: declared once, on RelaySettings
    add_dataclass_options({None: serve, "limits": limits}, RelaySettings)
    serve.add_argument("--no-access-log", action="store_true", help="no per-request log lines")
    serve.set_defaults(relay_run=run_serve)

    token = commands.add_parser("token", help="print a new random admin token")
    token.add_argument("--name", help="prefix the line with NAME: (names it in the relay's logs)")
    token.set_defaults(relay_run=run_token)


def run(args: argparse.Namespace) -> int:
    runner = getattr(args, "relay_run", None)
    if runner is None:
        print(args.relay_help(), file=sys.stderr)
        return 2
    return int(runner(args))


def run_token(args: argparse.Namespace) -> int:
    from taskapp.relay.server.settings import new_token

    token = new_token()
    print(f"{args.name}:{token}" if args.name else token)
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from taskapp.cli._common import dataclass_kwargs
    from taskapp.core.errors import ConfigurationError, PortError
    from taskapp.core.ports import listen_tcp
    from taskapp.relay.server.run import RelayServer
    from taskapp.relay.server.settings import RelaySettings, load_admin_tokens

    tokens = load_admin_tokens(args.admin_token_file)
    try:
        sock = listen_tcp(args.host, args.port)
    except OSError as exc:
        raise PortError(
            f"cannot listen on {args.host}:{args.port}: {exc.strerror}; pick another --port"
        ) from None
    port = sock.getsockname()[1]
    host_in_url = f"[{args.host}]" if ":" in args.host else args.host
    scheme = "https" if args.ssl_certfile else "http"
    try:
        options = dataclass_kwargs(args, RelaySettings)
        options["port"] = port  # the port bound (0 asks for any)
        if args.protocols is not None:
            options["protocols"] = args.protocols
        if args.trusted_proxy:
            options["trusted_proxies"] = tuple(args.trusted_proxy)
        settings = RelaySettings(
            public_url=args.public_url or f"{scheme}://{host_in_url}:{port}",
            admin_tokens=tokens,
            state_file=args.state_file,
            **options,
        )
    except ConfigurationError:
        sock.close()
        raise
    relay_logger = logging.getLogger("taskapp.relay")
    if relay_logger.getEffectiveLevel() > logging.INFO:
        relay_logger.setLevel(logging.INFO)
    if args.no_access_log:
        logging.getLogger("taskapp.relay.access").setLevel(logging.WARNING)
    server = RelayServer(settings, sock=sock)
    try:
        server.app.store.prepare()  # refuse to start (naming the path) if it cannot be written
    except ConfigurationError:
        sock.close()
        raise
    limits = {
        k: v
        for k, v in dataclasses.asdict(settings).items()
        if k.startswith(("max_", "stall", "memory", "stream_", "conn_", "default_ttl"))
    }
    origin = str(args.admin_token_file) if args.admin_token_file else "TASKAPP_RELAY_ADMIN_TOKEN"
    print(f"taskapp relay: listening on {scheme}://{host_in_url}:{port}", flush=True)
    print(f"  public URL:  {settings.public_base}", flush=True)
    print(f"  agent URL:   {settings.agent_url}", flush=True)
    print(f"  admin tokens: {len(tokens)} from {origin}", flush=True)
    print(f"  protocols:   {','.join(map(str, settings.protocols))}", flush=True)
    print(f"  limits:      {limits}", flush=True)
    try:
        server.run()
    finally:
        sock.close()
    print("taskapp relay: stopped", file=sys.stderr, flush=True)
    return 0
