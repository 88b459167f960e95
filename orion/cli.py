"""The ``orion`` command: ``head``, ``worker``, ``status`` and ``demo``."""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time

from . import security

DEFAULT_PORT = 6380


def _log_to_stdout():
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)


class _StopOnSignals:
    """SIGINT/SIGTERM call ``target.stop()``; installed before the target exists, so a
    signal that comes early (say, right after the head printed its address) is kept
    and honoured once ``attach`` hands over the target."""

    def __init__(self):
        self.requested = False
        self.target = None
        signal.signal(signal.SIGINT, self._handler)
        signal.signal(signal.SIGTERM, self._handler)

    def _handler(self, signum, frame):
        self.requested = True
        if self.target is not None:
            self.target.stop()

    def attach(self, target):
        self.target = target
        if self.requested:
            target.stop()


def cmd_head(args):
    from .transport.zmq_head import HeadServer

    stopper = _StopOnSignals()
    try:
        keys = security.load(args.keys)
        server = HeadServer(args.host, args.port, heartbeat_interval=args.heartbeat_interval,
                            heartbeat_liveness=args.heartbeat_liveness, policy=args.policy, keys=keys)
    except security.KeysError as exc:
        print(f"orion head: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # port in use, bad host...
        print(f"orion head: cannot bind tcp://{args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    services = _start_head_services(server, args)
    if services is None:
        return 1
    stopper.attach(server)
    print(server.address, flush=True)
    _log_to_stdout()
    logging.getLogger("orion.head").info("head %s listening on %s (heartbeat %.2f s x %d)", server.head_id,
                                         server.address, server.interval, server.liveness)
    if services.metrics_url:
        logging.getLogger("orion.head").info("Prometheus metrics on %s", services.metrics_url)
    if services.dashboard_url:
        logging.getLogger("orion.head").info("dashboard on %s", services.dashboard_url)
    services.warn_if_exposed()
    try:
        server.serve()  # returns once a signal called stop
    finally:
        services.stop()
    logging.getLogger("orion.head").info("head stopped")
    return 0


def _start_head_services(server, args):
    """The metrics and dashboard servers asked for; None (after closing the head) if
    one cannot bind."""
    from .observe import Services
    from .observe.state import HeadView

    try:
        return Services(HeadView.for_server(server), metrics_port=args.metrics_port, metrics_host=args.metrics_host,
                        dashboard_port=args.dashboard_port, dashboard_host=args.dashboard_host)
    except (OSError, ValueError, ImportError) as exc:
        print(f"orion head: cannot serve metrics/dashboard: {exc}", file=sys.stderr)
        server.stop()
        server.serve()  # returns at once: closes the head's sockets
        return None


def cmd_worker(args):
    from .api import check_address
    from .store.node_store import parse_size
    from .transport.zmq_node import NodeAgent

    try:
        check_address(args.address)
        resources = json.loads(args.resources) if args.resources else {}
        if not isinstance(resources, dict) or not all(
                isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
                for k, v in resources.items()) or "CPU" in resources:
            raise ValueError(f"--resources must be a JSON object of name -> amount >= 0 (not CPU), "
                             f"got {args.resources}")
        if args.num_workers < 1:
            raise ValueError(f"--num-workers must be >= 1, got {args.num_workers}")
        keys = security.load(args.keys)
        store_memory = parse_size(args.object_store_memory) if args.object_store_memory else None
        if store_memory is not None and store_memory < 1:
            raise ValueError("--object-store-memory must be at least 1 byte")
    except (ValueError, json.JSONDecodeError) as exc:
        print(f"orion worker: {exc}", file=sys.stderr)
        return 2
    stopper = _StopOnSignals()
    _log_to_stdout()
    node = NodeAgent(args.address, args.num_workers, resources, args.node_id,
                     heartbeat_interval=args.heartbeat_interval, heartbeat_liveness=args.heartbeat_liveness,
                     keys=keys, object_store_memory=store_memory, spill_dir=args.spill_dir)
    stopper.attach(node)
    logging.getLogger("orion.node").info("node %s starting %d workers for head %s", node.node_id,
                                         args.num_workers, args.address)
    node.serve()
    logging.getLogger("orion.node").info("node %s stopped", node.node_id)
    return 0


def query_nodes(address, timeout=3.0, keys=None, request="nodes"):
    """Ask the head at ``address`` for its node table (or, with ``request="status"``,
    its status: nodes, task counts, object store); None if it does not answer."""
    import zmq

    from .transport import protocol

    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if keys is not None:
        keys.as_client(sock)
    try:
        sock.connect(address)
        sock.send_multipart(protocol.encode(request, [1]))
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not sock.poll(remaining * 1000):
                return None
            try:
                msg_type, body, _ = protocol.decode(sock.recv_multipart())
            except protocol.ProtocolError:
                continue
            if msg_type == request + "_reply":
                return body[1]
    finally:
        sock.close(linger=0)
        context.term()


def _fmt(amount):
    return f"{amount:g}"


def _fmt_bytes(count):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024


def _store_cell(node):
    limit = node.get("store_limit")
    if not limit:
        return "-"
    return f"{_fmt_bytes(node.get('store_bytes', 0))}/{_fmt_bytes(limit)}"


def format_status(nodes, status=None):
    """The node table and totals; ``status`` (the head's ``status`` reply) adds the
    cluster-wide queue and the object store."""
    rows = [("NODE", "ADDRESS", "ALIVE", "CPU USED/TOTAL", "RUNNING", "QUEUED", "OTHER RESOURCES",
             "STORE USED/LIMIT", "HEARTBEAT AGE")]
    totals_used, totals_all, running = {}, {}, 0
    for node in nodes:
        total, free = node["resources"], node["available"]
        used = {k: max(0.0, total[k] - free.get(k, 0.0)) for k in total} if node["alive"] else {}
        other = ", ".join(f"{k} {_fmt(used.get(k, 0))}/{_fmt(v)}" for k, v in total.items() if k != "CPU")
        age = node.get("heartbeat_age")
        rows.append((node["node_id"], str(node["address"]), "yes" if node["alive"] else "no",
                     f"{_fmt(used.get('CPU', 0))}/{_fmt(total.get('CPU', 0))}", str(node["running"]),
                     str(node.get("queued", 0)), other or "-", _store_cell(node),
                     "-" if age is None else f"{age:.1f}s"))
        if node["alive"]:
            running += node["running"]
            for k, v in total.items():
                totals_all[k] = totals_all.get(k, 0.0) + v
                totals_used[k] = totals_used.get(k, 0.0) + used.get(k, 0.0)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    alive = sum(1 for n in nodes if n["alive"])
    totals = ", ".join(f"{k} {_fmt(totals_used.get(k, 0))}/{_fmt(v)}" for k, v in totals_all.items()) or "CPU 0/0"
    total = f"total: {alive} alive node(s) of {len(nodes)}, {totals} used, {running} task(s) running"
    if status is not None:
        in_nodes = status.get("node_store_bytes", 0)
        total += (f", {status['queued']} queued ({status['waiting_for_inputs']} more waiting for inputs), "
                  f"object store {_fmt_bytes(status['object_store_bytes'] + in_nodes)} in "
                  f"{status['object_store_objects']} object(s) ({_fmt_bytes(in_nodes)} of it in node stores)")
    lines.append(total)
    return "\n".join(lines)


def cmd_status(args):
    from .api import check_address

    address = args.address or os.environ.get("ORION_ADDRESS") or f"tcp://127.0.0.1:{DEFAULT_PORT}"
    try:
        check_address(address)
        keys = security.load(args.keys)
    except ValueError as exc:
        print(f"orion status: {exc}", file=sys.stderr)
        return 2
    if args.watch is not None and args.watch <= 0:
        print(f"orion status: --watch takes a positive number of seconds, got {args.watch:g}", file=sys.stderr)
        return 2
    status = query_nodes(address, args.timeout, keys, request="status")
    if status is None:
        print(f"orion status: no Orion head answered at {address} within {args.timeout:g} s "
              "(is `orion head` running there?)", file=sys.stderr)
        return 1
    if args.watch is None:
        print(_status_text(address, status, args.json))
        return 0
    try:  # redraw in place until Ctrl-C
        while True:
            text = _status_text(address, status, args.json) if status is not None else (
                f"orion status: no Orion head answered at {address} within {args.timeout:g} s; retrying")
            sys.stdout.write(f"\033[H\033[2J{text}\n\nevery {args.watch:g} s; "
                             f"{time.strftime('%H:%M:%S')}; Ctrl-C to stop\n")
            sys.stdout.flush()
            time.sleep(args.watch)
            status = query_nodes(address, args.timeout, keys, request="status")
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        return 0


def _status_text(address, status, as_json):
    if as_json:
        return json.dumps({"address": address, **status}, indent=2)
    return f"head: {address}\n{format_status(status['nodes'], status)}"


def cmd_keygen(args):
    public, secret = security.keygen(args.dir)
    print(f"wrote the cluster key pair {public} and {secret}")
    print(f"copy {args.dir} to every machine of the cluster (keep it secret: whoever holds it can run code "
          f"on the cluster) and pass --keys {args.dir} (or set ORION_KEYS={args.dir}) to every orion head, "
          f"orion worker, orion status and orion.init(address=..., keys=...)")
    return 0


def cmd_demo(args):
    from .demo import run_demo

    return run_demo(transport=args.transport, num_workers=args.num_workers, size=args.size)


def build_parser():
    parser = argparse.ArgumentParser(prog="orion", description="Orion: a fast distributed task runtime.")
    sub = parser.add_subparsers(dest="command", required=True)

    def heartbeat_flags(p):
        p.add_argument("--heartbeat-interval", type=float, default=None,
                       help="seconds between heartbeats (default 1.0, or ORION_HEARTBEAT_INTERVAL)")
        p.add_argument("--heartbeat-liveness", type=int, default=None,
                       help="missed heartbeats before a peer is declared dead (default 5)")

    def keys_flag(p):
        p.add_argument("--keys", default=None, metavar="DIR",
                       help="cluster keys made by `orion keygen DIR` (default: $ORION_KEYS; none = no "
                            "authentication, loopback only)")

    keygen = sub.add_parser("keygen", help="write a new cluster key pair into DIR")
    keygen.add_argument("dir")
    keygen.set_defaults(run=cmd_keygen)

    head = sub.add_parser("head", help="run a head in the foreground")
    keys_flag(head)
    head.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    head.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to bind (default {DEFAULT_PORT})")
    head.add_argument("--policy", default="least_loaded", choices=["least_loaded", "round_robin"])
    head.add_argument("--metrics-port", type=int, default=None,
                      help="serve Prometheus metrics on this port (http://HOST:PORT/metrics; default off)")
    head.add_argument("--metrics-host", default="127.0.0.1", help="address for the metrics (default loopback)")
    head.add_argument("--dashboard-port", type=int, default=None,
                      help="serve the web dashboard on this port (default off)")
    head.add_argument("--dashboard-host", default="127.0.0.1", help="address for the dashboard (default loopback)")
    heartbeat_flags(head)
    head.set_defaults(run=cmd_head)

    worker = sub.add_parser("worker", help="run a worker node in the foreground")
    keys_flag(worker)
    worker.add_argument("--address", required=True, help="the head's tcp://HOST:PORT")
    worker.add_argument("--num-workers", type=int, default=os.cpu_count() or 1)
    worker.add_argument("--resources", default=None, help='custom resources as JSON, e.g. \'{"GPU": 1}\'')
    worker.add_argument("--node-id", default=None)
    worker.add_argument("--object-store-memory", default=None, metavar="SIZE",
                        help="memory for large objects before they spill to disk, e.g. 2GB or 500MiB "
                             "(default 30%% of RAM, or ORION_OBJECT_STORE_MEMORY)")
    worker.add_argument("--spill-dir", default=None, metavar="DIR",
                        help="where objects spill past the memory limit (default a temporary directory)")
    heartbeat_flags(worker)
    worker.set_defaults(run=cmd_worker)

    status = sub.add_parser("status", help="print the cluster's nodes")
    keys_flag(status)
    status.add_argument("--address", default=None, help="the head's tcp://HOST:PORT (default ORION_ADDRESS "
                                                        f"or tcp://127.0.0.1:{DEFAULT_PORT})")
    status.add_argument("--json", action="store_true", help="print JSON for scripts")
    status.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the head")
    status.add_argument("--watch", type=float, nargs="?", const=2.0, default=None, metavar="SECONDS",
                        help="redraw every SECONDS (default 2) until Ctrl-C")
    status.set_defaults(run=cmd_status)

    demo = sub.add_parser("demo", help="run a demo map-reduce DAG on an embedded cluster")
    demo.add_argument("--transport", default="zmq", choices=["zmq", "inproc"])
    demo.add_argument("--num-workers", type=int, default=None)
    demo.add_argument("--size", type=int, default=256, help="number of data chunks")
    demo.set_defaults(run=cmd_demo)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command in ("head", "worker"):
        from . import gc_tuning

        gc_tuning.raise_threshold()  # a process of ours for good (see gc_tuning)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
