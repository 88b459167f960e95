"""The driver side of the API, shared by every transport.

A ``Client`` turns ``f.remote(...)`` into task specs, ``get``/``wait`` into
waits on a local ``ObjectStore``, and failures into the contract's exceptions.
Subclasses say how specs reach the head and how values reach the local store
(``InprocClient`` calls the head directly; the ZeroMQ client sends messages).
"""
from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import itertools
import threading
import time

from . import context, ids
from .errors import GetTimeoutError, OrionError, failure_to_error
from .head import TaskRecord
from .object_ref import LIFETIMES, ObjectRef
from .object_store import Failed, Remote
from .scheduler.events import TaskSpec
from .store import mappings


# Types of arguments and values that cannot hold an ObjectRef inside them.
SCALARS = frozenset((int, float, str, bytes, bool, type(None), complex))


def _check_timeout(timeout):
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, got {timeout!r}")
    if timeout < 0:
        raise ValueError(f"timeout must be >= 0, got {timeout!r}")
    return float(timeout)


def _as_ref_list(refs, what):
    if isinstance(refs, ObjectRef):
        return [refs], True
    if not isinstance(refs, (list, tuple)):
        raise TypeError(f"{what} takes an ObjectRef or a list of ObjectRefs, got {type(refs).__name__}")
    for i, ref in enumerate(refs):
        if not isinstance(ref, ObjectRef):
            raise TypeError(f"{what} takes a list of ObjectRefs, but item {i} is {type(ref).__name__}")
    return list(refs), False


def _nested_only(pickled, args, kwargs):
    """The ids of refs pickled into the arguments other than as top-level
    dependencies (a ref may be both), each once, in order."""
    extra = collections.Counter(pickled)
    for value in args:
        if type(value) is ObjectRef:
            extra[value.id] -= 1
    for value in kwargs.values():
        if type(value) is ObjectRef:
            extra[value.id] -= 1
    return tuple(object_id for object_id, count in extra.items() if count > 0)


def drained(pending):
    """The items of a deque that other threads append to (``LIFETIMES``'
    weakref callbacks, an embedded driver's deferred calls), popped until
    it is empty."""
    while pending:
        try:
            yield pending.popleft()
        except IndexError:
            return


# A driver's get of many refs decodes them this many at a time as they arrive
# (Client._get_in_order).
GET_WINDOW = 64


class Client:
    peer_id = "driver"
    # Arguments travel pickled, so a ref nested in them reaches the task as a
    # copy that the head must keep alive (TaskRecord.holds); False where they
    # travel by reference and the ObjectRef itself keeps its object (inproc).
    nested_refs_travel = True

    # Back-pressure: at most this many of a driver's tasks may be unfinished;
    # ``.remote`` blocks beyond it (subclasses that see results arrive count).
    max_unfinished = 100_000

    def __init__(self, store):
        self.store = store
        self.closed = False
        self._future_pool = None
        self._future_lock = threading.Lock()
        self._submitted = itertools.count(1)  # tasks submitted so far (next() is atomic)
        self._settled = 0  # tasks of ours that ended (written by one thread at a time)
        self._waiting = False  # a caller waits for room in _reserve
        self._room = threading.Condition(threading.Lock())
        ids.reseed()  # ids of an earlier client in this process must not look like ours
        self._prefix = ids.prefix()  # ids with it are ours: results of our tasks, our puts
        self._dropped = set()  # released before they arrived: not to be stored
        self._borrows = set()  # objects the head knows we hold an unpickled ref to (borrowed)
        # Ids inside results not reported yet (a worker batches its reports):
        # their releases and unborrows wait in _held_back until the report is
        # out, so that the head learns what holds them first.
        self._unreported = set()
        self._held_back = []
        # One hand-over at a time: a borrow taken from LIFETIMES by one thread
        # must not reach the head after a release another thread sends.
        self._flush_lock = threading.Lock()

    # ------------------------------------------------------ transport hooks
    def _send_submit(self, specs, functions):
        """Hand specs to the head; ``functions`` maps new function ids to functions."""
        raise NotImplementedError

    def _send_put(self, object_id, value):
        raise NotImplementedError

    def _request(self, object_ids):
        """Make sure these values will reach the local store."""

    def _blocked(self, worker_id, blocked, waits=()):
        """Tell the head this worker waits in get (True) or runs again (False).
        ``waits``: the ids it waits for when it needs all of them (no timeout):
        the head may have this worker run their producers meanwhile."""

    def _send_cancel(self, task_id, force):
        raise NotImplementedError

    def _encode_args(self, args, kwargs, task_name):
        """Whatever the head should carry to the worker; checks picklability."""
        raise NotImplementedError

    def _encode_value(self, value):
        raise NotImplementedError

    def _decode_value(self, entry):
        return entry

    def _resolve_remote(self, object_id, remote, deadline):
        """The stored entry that replaces a ``Remote`` one (networked runtimes)."""
        raise OrionError(f"object {object_id} lives in a node's store, which this runtime cannot reach")

    def _decode_failure_payload(self, payload):
        return payload

    def nodes(self):
        raise NotImplementedError

    def timeline_records(self):
        """The head's task records (``orion.observe.tasklog``), for ``orion.timeline``."""
        raise OrionError("orion.timeline is only available to a driver, not inside a task")

    def shutdown(self):
        self.closed = True
        with self._room:
            self._room.notify_all()
        if self._future_pool is not None:
            self._future_pool.shutdown(wait=False)

    # ------------------------------------------------------------------ API
    def submit(self, remote_function, args, kwargs, options):
        self._check_open()
        deps = []
        nested = False  # could a ref hide inside an argument (a container, an object)?
        for value in args:
            kind = type(value)
            if kind is ObjectRef:
                deps.append(value.id)
            elif kind not in SCALARS:
                nested = True
        if kwargs:
            for value in kwargs.values():
                kind = type(value)
                if kind is ObjectRef:
                    deps.append(value.id)
                elif kind not in SCALARS:
                    nested = True
        if len(deps) > 1:
            deps = list(dict.fromkeys(deps))
        task_id = ids.new_task_id()
        return_ids = ids.return_ids(task_id, options.num_returns)
        name = options.name or remote_function._default_name
        holds = ()
        if nested or deps:  # (refs pickled into the arguments are recorded: none escapes)
            with LIFETIMES.recording() as pickled:
                encoded = self._encode_args(args, kwargs, name)
            if pickled and self.nested_refs_travel:
                holds = _nested_only(pickled, args, kwargs)
        else:
            encoded = self._encode_args(args, kwargs, name)
        record = TaskRecord(remote_function._function_id, encoded, options.num_returns, options.retry_exceptions,
                            self.peer_id, holds)
        spec = TaskSpec(task_id, return_ids, tuple(deps), options.demand, options.max_retries, name, record,
                        context.current.worker is not None)
        if LIFETIMES.released or LIFETIMES.arrived or LIFETIMES.escapes:  # (the submit goes ahead)
            self._flush_releases(with_next_call=True)
        with self._guard():
            self._send_submit([spec], remote_function)
        if options.num_returns == 1:
            return ObjectRef(return_ids[0])
        return [ObjectRef(i) for i in return_ids]

    def put(self, value):
        self._check_open()
        if isinstance(value, ObjectRef):
            raise TypeError("orion.put of an ObjectRef is not allowed; pass the ref itself")
        if LIFETIMES.pending():
            # At once, not with the put: a large value is written before the
            # head hears of it, and the file of one just released may be
            # recycled for it (see ARCHITECTURE.md, the object store).
            self._flush_releases()
        object_id = ids.new_put_id()
        with LIFETIMES.recording() as contained:
            encoded = self._encode_value(value)
        with self._guard():
            self._send_put(object_id, encoded)
            if contained and self.nested_refs_travel:
                # The refs inside live as long as the value (orion.nested_refs).
                self._send_release((), (), (), [[object_id, list(dict.fromkeys(contained))]])
        return ObjectRef(object_id)

    def get(self, refs, timeout=None, progress=False):
        timeout = _check_timeout(timeout)
        ref_list, single = _as_ref_list(refs, "get")
        self._check_open()
        if LIFETIMES.released:
            self._flush_releases()
        object_ids = [r.id for r in ref_list]
        deadline = None if timeout is None else time.monotonic() + timeout
        if progress:
            from .progress_bar import wait_with_bar

            ready = wait_with_bar(self, object_ids, timeout)
        elif len(object_ids) > 1 and context.current.worker is None:
            return self._get_in_order(object_ids, timeout, deadline)
        else:
            ready = self._wait_for(object_ids, None, timeout)
        if not ready:
            self._timed_out(object_ids, timeout)
        values = [self._value(i, deadline) for i in object_ids]
        return values[0] if single else values

    def _get_in_order(self, object_ids, timeout, deadline):
        """A driver's ``get`` of several refs: each value is decoded as soon as
        it and those before it are in, while later tasks still run, instead of
        all of them after the last one arrives. What the caller sees is the
        same: the values once all are in, or the first failure in list order
        once all are in (or ``GetTimeoutError`` before that)."""
        store = self.store
        self._request([i for i in object_ids if i not in store])
        values, error = [], None
        # Waiting a window at a time, not id by id: one wake-up per window
        # keeps this thread off the head's back while tasks are still coming in.
        for start in range(0, len(object_ids), GET_WINDOW):
            window = object_ids[start:start + GET_WINDOW]
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not store.wait(window, None, remaining):
                self._timed_out(object_ids, timeout)
            if error is None:  # (after a failure, only wait for the rest)
                try:
                    values.extend(self._value(object_id, deadline) for object_id in window)
                except Exception as exc:  # noqa: BLE001 - raised once all are in, as before
                    error = exc
        if error is not None:
            raise error
        return values

    def _timed_out(self, object_ids, timeout):
        missing = [i for i in object_ids if i not in self.store]
        raise GetTimeoutError(f"get timed out after {timeout} s; {len(missing)} of {len(object_ids)} "
                              f"object(s) not ready, e.g. {missing[0]}")

    def wait(self, refs, num_returns=1, timeout=None):
        timeout = _check_timeout(timeout)
        ref_list, _ = _as_ref_list(refs, "wait")
        if isinstance(num_returns, bool) or not isinstance(num_returns, int) or num_returns < 0:
            raise ValueError(f"num_returns must be an int >= 0, got {num_returns!r}")
        if num_returns > len(ref_list):
            raise ValueError(f"num_returns ({num_returns}) is larger than the number of refs ({len(ref_list)})")
        if len(set(ref_list)) != len(ref_list):
            raise ValueError("wait takes a list of distinct ObjectRefs; this one has duplicates")
        self._check_open()
        object_ids = [r.id for r in ref_list]
        self._wait_for(object_ids, num_returns, timeout)
        ready, not_ready = [], []
        store = self.store
        for ref in ref_list:
            if len(ready) < num_returns and ref.id in store:
                ready.append(ref)
            else:
                not_ready.append(ref)
        return ready, not_ready

    def cancel(self, ref, force=False):
        if not isinstance(ref, ObjectRef):
            raise TypeError(f"cancel takes an ObjectRef, got {type(ref).__name__}")
        self._check_open()
        if ref.id in self.store:
            return  # finished (or failed): nothing to cancel
        task_id = ids.task_of(ref.id)
        with self._guard():
            self._send_cancel(task_id, bool(force))

    def future(self, ref):
        self._check_open()
        future = concurrent.futures.Future()
        future.set_running_or_notify_cancel()

        def complete(object_id, _keep_alive=ref):  # (the ref keeps the object from being released)
            # Runs under the store's lock: finish the future elsewhere, since
            # its done-callbacks are user code. The ref goes along: released
            # before the value is read there, the object could be freed.
            self._future_executor().submit(self._complete_future, future, _keep_alive)

        self._request([ref.id])
        self.store.add_callback(ref.id, complete)
        return future

    # ------------------------------------------------------------ internals
    def _reserve(self, count=1):
        """Block while the driver has ``max_unfinished`` unfinished tasks;
        return how many it had before these (a racy count: a hint only).

        Lock-free unless over the limit: ``next`` on an ``itertools.count`` is
        atomic, and only one thread at a time settles (the one delivering
        results), so the two counters need no lock on the hot path."""
        for _ in range(count):
            submitted = next(self._submitted)
        unfinished = submitted - self._settled  # (``submitted`` counts these)
        if unfinished > self.max_unfinished:
            with self._room:
                self._waiting = True  # (set before the re-check: a settle after it notifies)
                while submitted - self._settled > self.max_unfinished and not self.closed:
                    self._room.wait()  # shutdown notifies too: no caller stays stuck
                self._waiting = False
        return unfinished - count

    def _settle(self, count=1):
        """``count`` tasks of ours finished (results or failures arrived)."""
        self._settled += count
        if self._waiting:
            with self._room:
                self._room.notify_all()

    # ------------------------------------------------------- ref lifetimes
    def _flush_releases(self, with_next_call=False):
        """Hand over what ``LIFETIMES`` noted, in one message: borrows of the
        refs that arrived here by unpickling (before any release that could
        free what held them), releases of our objects that no ObjectRef in
        this process names any more and that never escaped, and unborrows of
        those we no longer hold (``orion.nested_refs``). Released ones
        go from our store at once. ``with_next_call``: the caller (a submit)
        calls the head next; a transport may tell the head with that call
        (``_defer_release``)."""
        with self._flush_lock:
            self._hand_over(with_next_call)

    def _hand_over(self, with_next_call):
        borrowed = self._take_borrows() if LIFETIMES.arrived or LIFETIMES.escapes else []
        freed, unborrowed = self._take_releases()
        if not (freed or borrowed or unborrowed):
            return
        if with_next_call and not (borrowed or unborrowed) and self._defer_release(freed):
            return
        with self._guard():
            self._send_release(freed, borrowed, unborrowed, ())

    def _flush_borrows(self):
        """Only the borrows (a worker's, before its report: its releases can
        wait for its next call, off the path of the result)."""
        with self._flush_lock:
            borrowed = self._take_borrows()
            if borrowed:
                self._send_release((), borrowed, (), ())

    def _take_borrows(self):
        """The refs that arrived here and are still held, and others' that
        escaped (borrowed for good; ours are never released): newly borrowed."""
        lifetimes, borrows = LIFETIMES, self._borrows
        if not self.nested_refs_travel:  # arguments and values stay objects here:
            lifetimes.arrived.clear()  # the ObjectRef itself keeps its object
            lifetimes.escapes.clear()
            return []
        borrowed = []
        # An ObjectRef that arrived by unpickling is borrowed, even one of ours:
        # we may have released that object when our first ObjectRef died, and
        # now hold it again.
        revived, prefix = lifetimes.revived, self._prefix
        for object_id in drained(lifetimes.arrived):
            if object_id in revived and object_id not in borrows:  # (still alive)
                borrows.add(object_id)
                borrowed.append(object_id)
        for object_id in drained(lifetimes.escapes):
            if not object_id.startswith(prefix) and object_id not in borrows:
                borrows.add(object_id)
                borrowed.append(object_id)
        return borrowed

    def _take_releases(self):
        """Ours whose ObjectRef died (released, dropped from our store) and
        others' we borrowed (unborrowed), less those held back: named by a
        result not reported yet (``_unreported``)."""
        lifetimes, prefix, borrows = LIFETIMES, self._prefix, self._borrows
        escaped, unreported = lifetimes.escaped, self._unreported
        freed, unborrowed, held = [], [], []
        for object_id, ours in self._held_back:
            if object_id in unreported:
                held.append((object_id, ours))
            else:
                (freed if ours else unborrowed).append(object_id)
        for object_id in drained(lifetimes.released):
            if object_id in escaped:
                continue
            if object_id in borrows:
                borrows.discard(object_id)
                ours = False
            elif object_id.startswith(prefix):
                ours = True
            else:
                continue
            if unreported and object_id in unreported:
                held.append((object_id, ours))
            else:
                (freed if ours else unborrowed).append(object_id)
        self._held_back = held
        if freed:
            self._release_local(freed)
        if unborrowed:
            self.store.delete_many(unborrowed)  # (a value fetched for it, if any)
        return freed, unborrowed

    def _reported(self):
        """A worker's report is out: the releases its results' refs held back
        may go, with its next call (not at once: after a report, the next
        dispatch is what counts)."""
        self._unreported.clear()

    def _releases_pending(self):
        """Deaths or held-back releases not handed over yet."""
        return bool(LIFETIMES.released or self._held_back)

    def _release_local(self, object_ids):
        store = self.store
        # Not arrived yet: drop them when they do.
        self._dropped.update(object_id for object_id in object_ids if object_id not in store)
        store.delete_many(object_ids)
        mappings.release_idle()  # files of large values nothing here uses may be recycled now

    def _to_ask(self, object_ids):
        """Of ``object_ids`` (not stored here), those to ask the head for: the
        objects of others, and those of ours that a value brought back after
        we had let go of them (our tasks' results otherwise come unasked)."""
        prefix, revived = self._prefix, LIFETIMES.revived
        if not revived:  # (nearly always: a comprehension is the cheaper pass)
            return [object_id for object_id in object_ids if not object_id.startswith(prefix)]
        wanted = []
        for object_id in object_ids:
            if not object_id.startswith(prefix):
                wanted.append(object_id)
            elif object_id in revived:
                self._dropped.discard(object_id)  # (its value must now be kept when it comes)
                wanted.append(object_id)
        return wanted

    def _send_release(self, released, borrowed, unborrowed, contained):
        """Tell the head, in this order: ``contained`` (``[[object id, [ids of
        the refs its value holds]]...]``), the objects of others we now hold a
        ref to (``borrowed``) and no longer hold (``unborrowed``), and ours
        that it may free once nothing needs them (``released``)."""

    def _defer_release(self, object_ids):
        """Keep these releases to tell the head with the next call that takes
        the head anyway (the submit under way); False: this transport tells
        it at once (``_send_release``)."""
        return False

    def _check_open(self):
        if self.closed:
            raise OrionError("this Orion client was shut down; call orion.init() again")

    def _guard(self):
        worker = context.current.worker
        return worker.guard() if worker is not None else contextlib.nullcontext()

    def _wait_for(self, object_ids, num_ready, timeout):
        store = self.store
        missing = [i for i in object_ids if i not in store]
        needed = len(object_ids) if num_ready is None else num_ready
        if len(object_ids) - len(missing) >= needed:
            return True
        self._request(missing)
        worker = context.current.worker
        if worker is None:
            return store.wait(object_ids, num_ready, timeout)
        # Inside a task: give the slot back while we wait, so the tasks we wait
        # for can run (no deadlock in recursive task graphs).
        with worker.guard():
            self._blocked(worker.worker_id, True, missing if num_ready is None and timeout is None else ())
        try:
            return worker.wait_interruptibly(store, object_ids, num_ready, timeout)
        finally:
            with worker.guard():
                self._blocked(worker.worker_id, False)

    def _value(self, object_id, deadline=None):
        entry = self.store.lookup(object_id)
        while type(entry) is Remote:  # a large value in some node's store: map or fetch it
            entry = self._resolve_remote(object_id, entry, deadline)
        if type(entry) is Failed:
            raise failure_to_error(entry.failure, self._decode_failure_payload)
        try:
            return self._decode_value(entry)
        except Exception as exc:  # e.g. its class lives in a module this process lacks
            raise OrionError(f"the value of object {object_id} arrived but cannot be unpickled here: "
                             f"{type(exc).__name__}: {exc}") from exc

    def _future_executor(self):
        with self._future_lock:
            if self._future_pool is None:
                self._future_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="orion-futures")
            return self._future_pool

    def _complete_future(self, future, ref):
        try:
            future.set_result(self._value(ref.id))
        except BaseException as exc:  # noqa: BLE001 - the future carries it
            future.set_exception(exc)
