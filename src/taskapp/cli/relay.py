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
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
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
    serve.add_argument(
        "--protocols",
        type=_protocols,
        default=(2, 1),
        help="protocol versions offered to agents: 1, 2 or 1,2 (default 1,2; v2 is preferred)",
    )
    limits = serve.add_argument_group(
        "limits",
        "sizes take bytes or a unit (65536, 64KiB, 100MB, 1GiB); times are in seconds;\n"
        "each line gives the default and what a caller gets beyond the limit",
    )
    limits.add_argument(
        "--max-leases",
        type=_positive_int,
        default=100,
        metavar="N",
        help="leases alive at once, all admin tokens together (default 100; 429 beyond)",
    )
    limits.add_argument(
        "--max-inflight",
        type=_positive_int,
        default=128,
        metavar="N",
        help="public requests in flight per lease (default 128; 503 beyond)",
    )
    limits.add_argument(
        "--max-request-bytes",
        type=parse_size,
        default=100 * 1024**2,
        metavar="SIZE",
        help="largest public request body (default 100MiB; 413 beyond)",
    )
    limits.add_argument(
        "--max-response-bytes",
        type=parse_size,
        default=200_000_000,
        metavar="SIZE",
        help="largest response body relayed; also bounds one v1 agent message, up to 64MiB "
        "(default 200MB; the response is cut off beyond)",
    )
    limits.add_argument(
        "--max-header-bytes",
        type=parse_size,
        default=64 * 1024,
        metavar="SIZE",
        help="total size of a public request's headers (default 64KiB; 431 beyond)",
    )
    limits.add_argument(
        "--default-ttl",
        type=_positive_int,
        default=3600,
        metavar="SECONDS",
        help="lifetime of a lease whose creator asks for none, seconds (default 3600)",
    )
    limits.add_argument(
        "--max-ttl",
        type=_positive_int,
        default=86400,
        metavar="SECONDS",
        help="longest lease lifetime granted, seconds; longer requests are cut to it "
        "(default 86400)",
    )
    limits.add_argument(
        "--max-deadline",
        type=_positive_float,
        default=600.0,
        metavar="SECONDS",
        help="longest a public request may take, seconds (default 600; 504 beyond)",
    )
    limits.add_argument(
        "--stall-timeout",
        type=_positive_float,
        default=120.0,
        metavar="SECONDS",
        help="longest silence from the task app within one request, seconds "
        "(default 120; 504 beyond)",
    )
    limits.add_argument(
        "--memory-budget",
        type=parse_size,
        default=512 * 1024**2,
        metavar="SIZE",
        help="response bytes the relay may buffer for slow callers, all leases together "
        "(default 512MiB; 503 for new requests beyond)",
    )
    limits.add_argument(
        "--stream-window",
        type=parse_size,
        default=2 * 1024**2,
        metavar="SIZE",
        help="v2 flow-control window per request: bytes in flight before the receiver "
        "acknowledges (default 2MiB; at least 64KiB)",
    )
    limits.add_argument(
        "--conn-window",
        type=parse_size,
        default=32 * 1024**2,
        metavar="SIZE",
        help="v2 flow-control window per agent connection, all requests together "
        "(default 32MiB; at least --stream-window)",
    )
    limits.add_argument(
        "--max-frame-bytes",
        type=parse_size,
        default=64 * 1024,
        metavar="SIZE",
        help="largest body chunk per frame: v2 frames above it close the agent (1008); "
        "REQ_BODY to v1 agents is split to it (default 64KiB; 1KiB-256KiB)",
    )
    limits.add_argument(
        "--reattach-grace",
        type=_positive_float,
        default=120.0,
        metavar="SECONDS",
        help="how long a lease waits for its agent to reconnect before it is removed, "
        "seconds (default 120)",
    )
    limits.add_argument(
        "--drain-timeout",
        type=_positive_float,
        default=10.0,
        metavar="SECONDS",
        help="on SIGTERM/SIGINT, how long in-flight requests may finish, seconds (default 10)",
    )
    serve.add_argument(
        "--trusted-proxy",
        action="append",
        default=None,
        help="address whose X-Forwarded-For is trusted (repeatable; default 127.0.0.1)",
    )
    serve.add_argument("--ssl-certfile", help="serve HTTPS with this certificate (PEM)")
    serve.add_argument("--ssl-keyfile", help="the private key of --ssl-certfile (PEM)")
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
    from taskapp.core.errors import ConfigurationError, PortError
    from taskapp.core.ports import listen_tcp
    from taskapp.relay.server.run import RelayServer
    from taskapp.relay.server.settings import RelaySettings, load_admin_tokens

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
