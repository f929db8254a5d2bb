"""``taskapp relay``: run a relay (``serve``) or make an admin token (``token``)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import re
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

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``512MiB`` -> 536870912, ``200MB`` -> 200000000, ``65536`` -> 65536."""
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 65536, 64KiB, 100MB)")
    number, unit, binary = match.groups()
    power = "kmgt".find(unit.lower()) + 1 if unit else 0
    base = 1024 if binary else 1000
    return int(float(number) * base**power)


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


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
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8787, help="port (default 8787; 0: any)")
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
        "--insecure-permissions",
        action="store_true",
        help="accept an admin token file other users can read",
    )
    serve.add_argument(
        "--state-file",
        type=Path,
        help="keep leases (hashes only) in this file so a restart keeps URLs working",
    )
    serve.add_argument("--protocols", type=_protocols, default=(2, 1), help="1, 2 or 1,2")
    serve.add_argument("--max-leases", type=int, default=100)
    serve.add_argument("--max-inflight", type=int, default=128, help="per lease (503 above)")
    serve.add_argument("--max-request-bytes", type=parse_size, default=100 * 1024**2)
    serve.add_argument("--max-response-bytes", type=parse_size, default=200_000_000)
    serve.add_argument("--max-header-bytes", type=parse_size, default=64 * 1024)
    serve.add_argument("--default-ttl", type=int, default=3600, help="lease TTL, seconds")
    serve.add_argument("--max-ttl", type=int, default=86400)
    serve.add_argument("--max-deadline", type=_positive_float, default=600.0, help="seconds (504)")
    serve.add_argument("--stall-timeout", type=_positive_float, default=120.0, help="seconds (504)")
    serve.add_argument("--memory-budget", type=parse_size, default=512 * 1024**2)
    serve.add_argument("--stream-window", type=parse_size, default=2 * 1024**2)
    serve.add_argument("--conn-window", type=parse_size, default=32 * 1024**2)
    serve.add_argument("--max-frame-bytes", type=parse_size, default=64 * 1024)
    serve.add_argument("--reattach-grace", type=_positive_float, default=120.0)
    serve.add_argument("--drain-timeout", type=_positive_float, default=10.0)
    serve.add_argument(
        "--trusted-proxy",
        action="append",
        default=None,
        help="address whose X-Forwarded-For is trusted (repeatable; default 127.0.0.1)",
    )
    serve.add_argument("--ssl-certfile")
    serve.add_argument("--ssl-keyfile")
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
    from taskapp.relay.server import new_token

    token = new_token()
    print(f"{args.name}:{token}" if args.name else token)
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from taskapp.core.errors import ConfigurationError, PortError
    from taskapp.core.ports import listen_tcp
    from taskapp.relay.server import RelayServer, RelaySettings, load_admin_tokens

    tokens = load_admin_tokens(
        args.admin_token_file, allow_insecure_permissions=args.insecure_permissions
    )
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
        settings = RelaySettings(
            public_url=args.public_url or f"{scheme}://{host_in_url}:{port}",
            admin_tokens=tokens,
            host=args.host,
            port=port,
            protocols=args.protocols,
            max_leases=args.max_leases,
            max_inflight=args.max_inflight,
            max_request_bytes=args.max_request_bytes,
            max_response_bytes=args.max_response_bytes,
            max_header_bytes=args.max_header_bytes,
            default_ttl=args.default_ttl,
            max_ttl=args.max_ttl,
            max_deadline=args.max_deadline,
            stall_timeout=args.stall_timeout,
            memory_budget=args.memory_budget,
            stream_window=args.stream_window,
            conn_window=args.conn_window,
            max_frame_bytes=args.max_frame_bytes,
            reattach_grace=args.reattach_grace,
            drain_timeout=args.drain_timeout,
            state_file=args.state_file,
            trusted_proxies=tuple(args.trusted_proxy or ("127.0.0.1",)),
            ssl_certfile=args.ssl_certfile,
            ssl_keyfile=args.ssl_keyfile,
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
