"""Cluster keys and ZeroMQ CURVE: who may talk to a head.

``orion keygen DIR`` writes one cluster key pair (``cluster.key`` and
``cluster.key_secret``, ZeroMQ certificate files). Every member of the cluster
holds the pair: the head uses it as its CURVE server key and admits, through a
ZAP authenticator, only clients whose public key is in DIR; nodes, worker
processes and drivers use it as their client key. A peer without the pair
cannot complete the handshake, so it cannot send a single message. Holding
the keys means being able to run any code on the cluster: keep DIR secret.
See docs/SECURITY.md.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import time
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger("orion.security")

KEY_NAME = "cluster"
KEYS_ENV = "ORION_KEYS"


class KeysError(ValueError):
    """Keys missing or unreadable; the message says how to fix it."""


def keygen(directory):
    """Write a new cluster key pair into ``directory``; returns the two paths."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    public, secret = zmq.auth.create_certificates(path, KEY_NAME)
    os.chmod(secret, 0o600)
    return public, secret


def resolve(keys):
    """``keys`` if given, else ``$ORION_KEYS``, else None (no authentication)."""
    keys = keys if keys is not None else os.environ.get(KEYS_ENV) or None
    return None if keys is None else str(keys)


class ClusterKeys:
    def __init__(self, directory):
        self.directory = str(directory)
        secret_file = Path(directory) / f"{KEY_NAME}.key_secret"
        try:
            self.public, self.secret = zmq.auth.load_certificate(secret_file)
        except (OSError, ValueError) as exc:
            raise KeysError(f"cannot read the cluster keys in {directory} ({exc}); "
                            f"create them with `orion keygen {directory}`") from None
        if not self.secret:
            raise KeysError(f"{secret_file} holds no secret key; create keys with `orion keygen DIR`")

    def as_server(self, sock):
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True

    def as_client(self, sock):
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_serverkey = self.public

    def start_authenticator(self, context):
        """A ZAP handler that admits only the public keys found in the keys folder."""
        auth = ThreadAuthenticator(context)
        auth.start()
        auth.configure_curve(domain="*", location=self.directory)
        return auth


def load(keys):
    """``ClusterKeys`` for a folder (or ``$ORION_KEYS``), or None when neither is set."""
    directory = resolve(keys)
    return None if directory is None else ClusterKeys(directory)


def is_loopback(host):
    if host in ("localhost", "127.0.0.1", "::1"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def require_keys_for(host, keys):
    """Refuse a non-loopback bind without keys (an open port runs anyone's code)."""
    if keys is None and not is_loopback(host):
        raise KeysError(
            f"refusing to listen on {host} without authentication: anyone who can reach this port could "
            f"run code here. Create cluster keys with `orion keygen DIR`, copy DIR to every machine of the "
            f"cluster (keep it secret), and start every head, worker and driver with --keys DIR (or "
            f"{KEYS_ENV}=DIR); or bind to 127.0.0.1.")


_HANDSHAKE_FAILURES = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                       | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
HANDSHAKE_EVENTS = _HANDSHAKE_FAILURES


class RefusalLog:
    """Logs refused connections: the first one, then at most one summary line
    every ``period`` seconds, so a flood of attempts cannot flood the log."""

    def __init__(self, period=10.0):
        self.period = period
        self.count = 0
        self._last = None
        self._unlogged = 0

    def refused(self, reason):
        self.count += 1
        now = time.monotonic()
        if self._last is None or now - self._last >= self.period:
            extra = f" ({self._unlogged} more since the last report)" if self._unlogged else ""
            log.warning("refused a connection: %s%s; %d refused so far", reason, extra, self.count)
            self._last = now
            self._unlogged = 0
        else:
            self._unlogged += 1
