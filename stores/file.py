"""The durable single-host store: memory, plus a journal written before every reply.

Files, for ``file:///var/lib/mini-ipam/state.json``::

    state.json          snapshot: {"format": 1, "generation": G, "events": [...]}
    state.json.G.log    journal: one JSON event per line, applied after snapshot G
    state.json.lock     held (flock) while a process has the store open

A change appends one line to the journal and ``fdatasync``s it before the store
answers, so a reply always means the change is on disk, and a ``kill -9`` can at
worst leave one unacknowledged, half-written last line, which start-up drops.
Anything else that cannot be parsed stops start-up with ``CorruptState`` naming
the file and line: state is never reset silently. A file that cannot be read or
written at all (permissions, a full disk) is a plain ``StoreError`` whose cause is
the ``OSError`` (see ``stores.disk``). While the journal cannot be written, every
change is refused (and truncated away, so the journal stays whole) and ``ping``
raises the failure, until a check finds room again.

When the journal has grown past twice the live state, the journal starts over as
generation G+1 and a snapshot of the state at that moment is written behind it,
in a thread of its own, to a temporary file, synced and renamed over the old one;
then the older journals are removed. Until the rename, start-up replays snapshot G
and journals G and G+1. That keeps the cost of a change independent of the number
of live claims (amortised), and the files small; requests wait only while the state
is copied, not while the snapshot is encoded and written.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from stores import disk
from stores.base import ConfigurationError, CorruptState, StoreError, StoreTraits
from stores.journal import decode_event, encode_event
from stores.memory import Event, MemoryStore, StateCopy

FORMAT = 1
MIN_COMPACT_EVENTS = 1024
SNAPSHOT_CHUNK = 1000
"""Events encoded per step while a snapshot is written, so requests get the interpreter in between."""
ROOM_CHECK = 64 * 1024
"""Bytes the journal must have room for before a failed write counts as over: a few hundred changes."""

log = logging.getLogger("stores.file")


class FileStore(MemoryStore):
    """A MemoryStore whose every change is journalled to a file first."""

    TRAITS = StoreTraits(single_writer=True)

    def __init__(self, path: str | os.PathLike[str], *, read_only: bool = False) -> None:
        """Open the state at ``path``.

        ``read_only`` reads it without the lock and changes nothing, not even a torn
        last line: for looking at the state while a driver runs. Changes then raise.
        """
        super().__init__()
        self.path = Path(path)
        self.read_only = read_only
        self._log_fd: int | None = None
        self._log_size = 0
        self._log_events = 0
        self._live_events = 0
        self._compactor: threading.Thread | None = None
        self._write_failure: StoreError | None = None
        if read_only:
            try:
                missing = not self.path.exists() and not self._log_path(0).exists()
            except OSError as exc:
                raise disk.failure("cannot look at the state file", self.path, exc) from exc
            if missing:
                raise StoreError(f"there is no state at {self.path} (has a driver run with this store?)")
            self._lock_fd = -1
            self._generation = self._load()
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise disk.failure("cannot create the state directory", self.path.parent, exc) from exc
        self._lock_fd = self._take_lock()
        try:
            self._generation = self._load()
            self._open_log()
        except BaseException:
            self.close()
            raise

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 5.0, read_only: bool = False) -> FileStore:
        """Open ``file:///absolute/path.json`` (see ``__init__`` for ``read_only``; a local file needs no timeout)."""
        return cls(cls.path_of(url), read_only=read_only)

    @staticmethod
    def path_of(url: str) -> str:
        """The state file a ``file:///absolute/path.json`` URL names; ConfigurationError for any other URL."""
        parts = urlsplit(url)
        path = unquote(parts.path)
        if parts.netloc not in ("", "localhost") or not path.startswith("/") or path.endswith("/") or parts.query:
            raise ConfigurationError(f"a file store URL is file:///absolute/path.json, not {url!r}")
        return path

    @property
    def is_open(self) -> bool:
        """False once ``close()`` was called."""
        return self._log_fd is not None

    # -- start-up ---------------------------------------------------------

    def _take_lock(self) -> int:
        lock = Path(f"{self.path}.lock")
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise disk.failure("cannot open the lock file", lock, exc) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreError(f"{self.path} is in use by another mini-ipam process") from None
        return fd

    def _log_path(self, generation: int) -> Path:
        return Path(f"{self.path}.{generation}.log")

    def _load(self) -> int:
        """Rebuild state from the snapshot and the journals after it; return the journal generation."""
        try:
            exists = self.path.exists()
        except OSError as exc:
            raise disk.failure("cannot look at the state file", self.path, exc) from exc
        generation = self._load_snapshot() if exists else 0
        self._live_events = self._live_count()
        if not self.read_only:
            self._remove_journals_before(generation)
        while self._log_path(generation + 1).exists():
            # A compaction died after starting the next journal but before its snapshot landed.
            self._replay_log(generation)
            generation += 1
        self._replay_log(generation)
        return generation

    def _load_snapshot(self) -> int:
        """Apply the snapshot's events; return its generation.

        Each event is applied as soon as the parser has read it and then dropped, so
        the whole parsed snapshot never exists at once: with 100,000 pools it would
        take more memory than the state it describes, and much of that would stay
        with the process. Errors are raised in the order a plain parse would find
        them: an unreadable file, then one that is not a state file, then a bad event.
        """
        failures: list[CorruptState] = []

        def apply(data: dict[str, Any]) -> Any:
            if "op" not in data:
                return data  # the snapshot itself, or the block inside an event
            if not failures:
                try:
                    self._replay(data, self.path)
                except CorruptState as exc:
                    failures.append(exc)
            return None

        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise disk.failure("cannot read the state file", self.path, exc) from exc
        try:
            snapshot = json.loads(data, object_hook=apply)
        except ValueError as exc:
            where = f"line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else "its text"
            raise CorruptState(f"state file {self.path} is not valid JSON at {where}: {exc}") from exc
        written_as = snapshot.get("format") if isinstance(snapshot, dict) else None
        if isinstance(written_as, int) and written_as != FORMAT:
            # Not corrupt: another version's. Moving it aside would lose it; the version that wrote it reads it.
            raise StoreError(
                f"state file {self.path} is in format {written_as}, which another version of mini-ipam wrote; this "
                f"version reads format {FORMAT}: install the version that wrote it (the file is left as it is)"
            )
        if (
            not isinstance(snapshot, dict)
            or snapshot.get("format") != FORMAT
            or not isinstance(snapshot.get("generation"), int)
            or not isinstance(snapshot.get("events"), list)
        ):
            raise CorruptState(f"state file {self.path} is not a mini-ipam state file (format {FORMAT})")
        if failures:
            raise failures[0]
        stray = next((item for item in snapshot["events"] if item is not None), None)
        if stray is not None:
            self._replay(stray, self.path)  # not an event: raises CorruptState saying why
        generation: int = snapshot["generation"]
        return generation

    def _replay_log(self, generation: int) -> None:
        path = self._log_path(generation)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise disk.failure("cannot read the journal", path, exc) from exc
        complete, _, torn = data.rpartition(b"\n")
        if torn and not self.read_only:
            # The last line was never finished, so it was never acknowledged: drop it.
            try:
                with open(path, "r+b") as handle:
                    handle.truncate(len(complete) + 1 if complete else 0)
                    os.fsync(handle.fileno())
            except OSError as exc:
                raise disk.failure("cannot drop the unfinished last line of the journal", path, exc) from exc
        for number, line in enumerate(_lines(complete), start=1):
            try:
                event = json.loads(line)
            except ValueError as exc:
                raise CorruptState(f"journal {path} line {number} is not valid JSON: {exc}") from exc
            self._replay(event, path, number)
            self._log_events += 1

    def _replay(self, event: Any, source: Path, line: int | None = None) -> None:
        try:
            self._apply(decode_event(event))
        except (KeyError, TypeError, ValueError) as exc:
            where = f"{source} line {line}" if line else str(source)
            raise CorruptState(f"{where} does not fit the state before it: {exc!r}") from exc

    def _open_log(self) -> None:
        path = self._log_path(self._generation)
        try:
            self._log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self._log_size = os.fstat(self._log_fd).st_size
            _sync_directory(self.path.parent)
        except OSError as exc:
            raise disk.failure("cannot open the journal", path, exc) from exc

    # -- changes ----------------------------------------------------------

    def _commit(self, event: Event) -> None:
        line = (json.dumps(encode_event(event), separators=(",", ":")) + "\n").encode()
        self._append(line)
        self._apply(event)
        self._log_events += 1
        self._live_events += _live_delta(event)
        if self._log_events > max(MIN_COMPACT_EVENTS, 2 * self._live_events):
            self._compact()

    def _append(self, line: bytes) -> None:
        if self._log_fd is None:
            raise StoreError(f"state file {self.path} is {'open read-only' if self.read_only else 'closed'}")
        try:
            disk.write_all(self._log_fd, line)
            os.fdatasync(self._log_fd)
        except OSError as exc:
            # Cut off whatever part of the line reached the file, so the journal stays whole.
            try:
                os.ftruncate(self._log_fd, self._log_size)
            except OSError:
                pass
            failure = disk.failure("cannot write the journal", self._log_path(self._generation), exc)
            self._failed_to_write(failure)
            raise failure from exc
        self._log_size += len(line)
        if self._write_failure is not None:
            self._can_write_again()

    def _failed_to_write(self, failure: StoreError) -> None:
        if self._write_failure is None or str(self._write_failure) != str(failure):
            log.error("%s; every change is refused, and nothing is changed, until it can be written", failure)
        self._write_failure = failure

    def _can_write_again(self) -> None:
        log.warning("the journal of %s can be written again (it was: %s)", self.path, self._write_failure)
        self._write_failure = None

    def ping(self) -> None:
        """Raise the last failure to write the journal while there is still no room to write it."""
        if self._write_failure is None:
            return
        with self._lock:
            failure = self._write_failure
            if failure is None:
                return
            if self._log_fd is not None and disk.has_room(self._log_fd, self._log_size, ROOM_CHECK):
                self._can_write_again()
                return
            raise failure

    def _compact(self) -> None:
        """Start the next journal generation and have a thread write the snapshot it follows.

        Runs under the store's lock, and does there only what must be atomic with the
        changes: copy the state (plain tuples) and switch the journal. Building, encoding
        and writing the snapshot, the part that grows with the state, happens in
        ``_write_snapshot`` while requests go on.
        """
        if self._compactor is not None and self._compactor.is_alive():
            return  # the previous snapshot is still being written; the journal just grows meanwhile
        state = self._copy_state()
        generation = self._generation + 1
        try:
            fd = os.open(self._log_path(generation), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            _sync_directory(self.path.parent)
        except OSError as exc:
            log.warning("%s; the journal keeps growing until it can", disk.failure(
                "cannot start the next journal", self._log_path(generation), exc))  # fmt: skip
            self._log_events = 0  # nothing changed; compaction is retried after later changes
            return
        if self._log_fd is not None:
            os.close(self._log_fd)
        self._log_fd, self._log_size, self._generation = fd, os.fstat(fd).st_size, generation
        self._log_events = 0
        self._live_events = self._live_count()
        self._compactor = threading.Thread(
            target=self._write_snapshot, args=(generation, state), name="mini-ipam snapshot", daemon=True
        )
        self._compactor.start()

    def _write_snapshot(self, generation: int, state: StateCopy) -> None:
        """Write snapshot ``generation`` of ``state``, then remove the journals it replaces."""
        temporary = self.path.with_name(self.path.name + ".tmp")
        events = list(self._snapshot_events(state))
        try:
            with open(temporary, "wb") as handle:
                handle.write(b'{"format":%d,"generation":%d,"events":[' % (FORMAT, generation))
                for start in range(0, len(events), SNAPSHOT_CHUNK):
                    chunk = events[start : start + SNAPSHOT_CHUNK]
                    text = ",".join(json.dumps(encode_event(event), separators=(",", ":")) for event in chunk)
                    handle.write(b"," if start else b"")
                    handle.write(text.encode())
                handle.write(b"]}")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path)
            _sync_directory(self.path.parent)
        except OSError as exc:
            # The old snapshot and every journal since are intact: start-up replays them all, and the
            # next compaction writes a snapshot again. The partial snapshot must not take up the room.
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)
            log.warning("%s; the journals since the last snapshot are kept instead",
                        disk.failure("cannot write the snapshot", temporary, exc))  # fmt: skip
            return
        self._remove_journals_before(generation)

    def _remove_journals_before(self, generation: int) -> None:
        """Delete the journals that snapshot ``generation`` replaces."""
        for stale in self.path.parent.glob(f"{self.path.name}.*.log"):
            suffix = stale.name[len(self.path.name) + 1 : -len(".log")]
            if suffix.isdigit() and int(suffix) < generation:
                stale.unlink(missing_ok=True)

    def wait_for_snapshot(self) -> None:
        """Return once no snapshot is being written (for tests and benchmarks)."""
        compactor = self._compactor
        if compactor is not None:
            compactor.join()

    def close(self) -> None:
        """Finish a snapshot being written, close the journal and release the lock on the state file."""
        with self._lock:
            self.wait_for_snapshot()
            if self._log_fd is not None:
                os.close(self._log_fd)
                self._log_fd = None
            if self._lock_fd >= 0:
                os.close(self._lock_fd)
                self._lock_fd = -1


def _lines(data: bytes) -> Iterator[bytes]:
    """The newline-separated lines of ``data``, one at a time (a long journal is not split into a list at once)."""
    if not data:
        return
    start = 0
    while (end := data.find(b"\n", start)) >= 0:
        yield data[start:end]
        start = end + 1
    yield data[start:]


def _live_delta(event: Event) -> int:
    """Roughly how many snapshot events a change adds (+1) or removes (-1)."""
    return {"open": 1, "claim": 1, "set": 1, "release": -1, "close": -1}.get(event["op"], 0)


def _sync_directory(directory: Path) -> None:
    """Make a create or rename in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
