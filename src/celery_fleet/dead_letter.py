"""The dead-letter list on Redis: read it, requeue from it, drop from it.

Entries are written by :mod:`celery_fleet.transport` (newest first): one line of JSON
metadata (``queue``, ``reason``, ``at``), a newline, then the message exactly as it was
on the queue.  Requeue and drop name an entry by its exact bytes (``LREM``), so they act
on the entry that was listed even when others arrive meanwhile, and requeue moves it in
one atomic script: it is in the dead-letter list or back on its queue, never in neither.

``celery-fleet dead-letter list|requeue|drop`` (:func:`dead_letter_command`).
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import click

from celery_fleet.transport import BELL_CAP, DEAD_LETTER_KEY, DELIVERY_COUNT_HEADER, bell_key, original_tag

#: kombu's separator between a queue name and its priority step (celery-fleet keeps steps 0-9).
PRIORITY_SEP = "\x06\x16"

#: Removes entry ARGV[1] from the dead-letter list KEYS[1] and, only if it was there, pushes
#: ARGV[2] onto the queue list KEYS[2] and rings the queue's bell KEYS[3].
REQUEUE_SCRIPT = f"""
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  redis.call('LPUSH', KEYS[2], ARGV[2])
  redis.call('LPUSH', KEYS[3], 1)
  redis.call('LTRIM', KEYS[3], 0, {BELL_CAP - 1})
  return 1
end
return 0
"""


class NotRequeueable(ValueError):
    """The entry is not a kombu message; it can be dropped, not requeued."""


@dataclass(frozen=True)
class DeadLetter:
    """One entry of the dead-letter list."""

    index: int
    entry: bytes
    queue: str
    reason: str
    at: float | None
    raw: bytes

    @classmethod
    def parse(cls, index: int, entry: bytes) -> DeadLetter:
        head, sep, raw = entry.partition(b"\n")
        try:
            meta = json.loads(head) if sep else {}
        except ValueError:
            meta = {}
        if not isinstance(meta, dict):
            meta = {}
        at = meta.get("at")
        return cls(
            index=index,
            entry=entry,
            queue=str(meta.get("queue") or ""),
            reason=str(meta.get("reason") or "unknown"),
            at=float(at) if isinstance(at, int | float) else None,
            raw=raw if sep else entry,
        )

    def message(self) -> dict[str, Any] | None:
        """The kombu message, or None if the raw bytes are not one."""
        try:
            payload = json.loads(self.raw)
        except ValueError:
            return None
        if isinstance(payload, dict) and isinstance(payload.get("properties"), dict):
            return payload
        return None

    def summary(self) -> dict[str, Any]:
        payload = self.message()
        headers = payload.get("headers") if payload else None
        headers = headers if isinstance(headers, dict) else {}
        return {
            "index": self.index,
            "queue": self.queue,
            "reason": self.reason,
            "at": self.at,
            "task": headers.get("task"),
            "id": headers.get("id"),
            "deliveries": headers.get(DELIVERY_COUNT_HEADER),
            "requeueable": payload is not None,
            "raw": self.raw[:200].decode("utf-8", "backslashreplace"),
        }

    def requeued_message(self) -> tuple[str, bytes]:
        """(queue list, message) to push back: the delivery count reset, the original tag."""
        payload = self.message()
        if payload is None or not self.queue:
            raise NotRequeueable(
                f"entry {self.index} is not a kombu message of a known queue ({self.reason})"
            )
        headers = payload.get("headers")
        if isinstance(headers, dict):
            headers.pop(DELIVERY_COUNT_HEADER, None)
        properties = payload["properties"]
        if isinstance(properties.get("delivery_tag"), str):
            properties["delivery_tag"] = original_tag(properties["delivery_tag"])
        try:
            priority = min(max(int(properties.get("priority") or 0), 0), 9)
        except (TypeError, ValueError):
            priority = 0
        key = self.queue if priority == 0 else f"{self.queue}{PRIORITY_SEP}{priority}"
        return key, json.dumps(payload).encode("utf-8")


def read(client: Any, *, key: str = DEAD_LETTER_KEY, limit: int = 100) -> list[DeadLetter]:
    """The newest ``limit`` entries, newest first (index 0)."""
    entries = client.lrange(key, 0, limit - 1) if limit > 0 else []
    return [DeadLetter.parse(i, entry) for i, entry in enumerate(entries)]


def requeue(client: Any, letter: DeadLetter, *, key: str = DEAD_LETTER_KEY) -> bool:
    """Put one entry back on its queue (False if it was no longer in the list)."""
    queue_key, message = letter.requeued_message()
    return bool(client.eval(REQUEUE_SCRIPT, 3, key, queue_key, bell_key(letter.queue), letter.entry, message))


def drop(client: Any, letter: DeadLetter, *, key: str = DEAD_LETTER_KEY) -> bool:
    return bool(client.lrem(key, 1, letter.entry))


def _client(broker_url: str) -> Any:
    import redis

    if not broker_url.startswith(("redis://", "rediss://")):
        raise click.BadParameter(
            "the dead-letter list lives on Redis brokers (redis://, rediss://); on RabbitMQ dead letters "
            "go where the queues' policy sends them (dead-letter-exchange; see the README)",
            param_hint="--broker-url",
        )
    return redis.Redis.from_url(broker_url, socket_timeout=15, socket_connect_timeout=5)


def _chosen(letters: Sequence[DeadLetter], indexes: Sequence[int], every: bool) -> list[DeadLetter]:
    if every:
        return list(letters)
    by_index = {letter.index: letter for letter in letters}
    missing = [i for i in indexes if i not in by_index]
    if missing:
        raise click.BadParameter(
            f"no entries {missing} (see `celery-fleet dead-letter list`)", param_hint="INDEX"
        )
    return [by_index[i] for i in indexes]


broker_option = click.option(
    "--broker-url",
    envvar="CELERY_BROKER_URL",
    default="redis://127.0.0.1:6379/0",
    show_default=True,
    help="The Redis broker (CELERY_BROKER_URL).",
)
limit_option = click.option(
    "--limit", type=click.IntRange(1), default=1000, show_default=True, help="Entries read (newest first)."
)


@click.group("dead-letter")
def dead_letter_command() -> None:
    """Inspect, requeue or drop messages in the Redis dead-letter list (celery-fleet:dead-letter)."""


@dead_letter_command.command("list")
@broker_option
@limit_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per entry.")
def list_command(broker_url: str, limit: int, as_json: bool) -> None:
    """List the newest entries: index, queue, reason, task name and id."""
    client = _client(broker_url)
    total = client.llen(DEAD_LETTER_KEY)
    letters = read(client, limit=limit)
    for letter in letters:
        s = letter.summary()
        if as_json:
            click.echo(json.dumps(s))
        else:
            task = f"{s['task']}[{s['id']}]" if s["task"] else repr(s["raw"][:80])
            click.echo(f"{s['index']:>4}  {s['queue'] or '?':<12} {task}  -- {s['reason']}")
    if not as_json:
        click.echo(
            f"{total} dead letter(s){f', newest {len(letters)} shown' if total > len(letters) else ''}"
        )


def selection(verb: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """The options of a command that acts on chosen entries; the command gets the entries."""

    def wrap(command: Callable[..., None]) -> Callable[..., None]:
        @broker_option
        @limit_option
        @click.option("--all", "every", is_flag=True, help="Every entry read (up to --limit).")
        @click.argument("indexes", nargs=-1, type=int)
        @functools.wraps(command)
        def run(broker_url: str, limit: int, every: bool, indexes: tuple[int, ...]) -> None:
            if not every and not indexes:
                raise click.UsageError(f"name the entries to {verb} (INDEX ...) or pass --all")
            client = _client(broker_url)
            command(client, _chosen(read(client, limit=limit), indexes, every))

        return run

    return wrap


@dead_letter_command.command("requeue")
@selection("requeue")
def requeue_command(client: Any, letters: list[DeadLetter]) -> None:
    """Put entries back on their queues (delivery count reset); INDEX as `list` shows it."""
    moved = skipped = 0
    for letter in letters:
        try:
            if requeue(client, letter):
                moved += 1
        except NotRequeueable as exc:
            skipped += 1
            click.echo(f"skipped: {exc}", err=True)
    click.echo(f"requeued {moved} message(s)" + (f", skipped {skipped}" if skipped else ""))
    sys.exit(1 if skipped and not moved else 0)


@dead_letter_command.command("drop")
@selection("drop")
def drop_command(client: Any, letters: list[DeadLetter]) -> None:
    """Delete entries for good; INDEX as `list` shows it."""
    click.echo(f"dropped {sum(drop(client, letter) for letter in letters)} message(s)")
