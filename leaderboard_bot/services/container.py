"""Builds the services from the boot settings and connects them; no Discord needed."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..config import Settings, SpamLimit, Tunables, earlier_state_paths, local_state_path
from ..db import Storage
from .activity import ActivityService
from .boards import BoardService
from .days import Calendar
from .health import HealthMonitor, Sources
from .lease import LeaseService
from .membership import MemberLookup, MembershipService
from .names import NameService, NameSource
from .privacy import PrivacyService
from .ranking import Rankings, TopCache
from .ratelimit import MessageGuard, NullGuard, SpamGuard
from .recovery import RecoveryFile
from .seasons import SeasonService
from .settings import RuntimeSettings, SettingsStore
from .voice import VoiceRules, VoiceTracker


def recovery_file(database_url: str, guild_id: int = 0) -> RecoveryFile | None:
    """Where a shutdown that cannot reach the database saves what it could not write: beside a
    SQLite file, or for PostgreSQL in the directory the bot starts in (config.local_state_path)."""
    path = local_state_path(database_url, guild_id)
    if path == ":memory:":
        return None
    earlier = tuple(Path(p + ".unsaved.json") for p in earlier_state_paths(database_url, guild_id))
    return RecoveryFile(Path(path + ".unsaved.json"), also=earlier)


def build_guard(limit: SpamLimit | None) -> MessageGuard:
    # Judged on message times (wall clock), not on when a message happened to be processed.
    return NullGuard() if limit is None else SpamGuard(limit.burst, limit.refill_rate, clock=time.time)


def voice_rules(settings: RuntimeSettings) -> Callable[[], VoiceRules]:
    def rules() -> VoiceRules:
        current = settings.current
        return VoiceRules(count_deafened=current.voice_count_deafened, count_alone=current.voice_count_alone)

    return rules


@dataclass
class Services:
    settings: RuntimeSettings
    storage: Storage
    names: NameService
    activity: ActivityService
    seasons: SeasonService
    rankings: Rankings
    boards: BoardService
    health: HealthMonitor
    settings_store: SettingsStore
    lease: LeaseService
    membership: MembershipService
    privacy: PrivacyService

    async def open(self) -> None:
        """Open the database and restore state (seasons, saved counts, board history)."""
        await self.open_storage()
        await self.activate()

    async def open_storage(self) -> None:
        """What a standby needs too: the database and the stored settings (reads only)."""
        await self.storage.open()
        await self.settings_store.load()

    async def activate(self) -> None:
        """Restore what counting needs (this instance holds the lease, or runs alone).

        Everything is read here, not kept from :meth:`open_storage`: a standby opened its storage
        long before it takes over, and the active instance may have changed the stored settings
        since (``/leaderboard settings set`` or ``reset``). They are read again before anything
        counts, so the excluded channels, the spam limit or the board size in force are the stored
        ones from the first message on."""
        await self.settings_store.load()  # first: the spam guard, voice rules and exclusions follow it
        await self.activity.start()  # before seasons: a season roll saved in the recovery file is applied here
        await self.privacy.load()  # before the listeners start: a stopped member is never counted
        await self.seasons.load()
        await self.boards.load()
        self.rankings.warm()


def build_services(
    config: Settings,
    storage: Storage,
    source: NameSource | None,
    *,
    clock: Callable[[], float] = time.time,
    monotonic: Callable[[], float] | None = None,
    lease: LeaseService | None = None,
    members: MemberLookup | None = None,
) -> Services:
    settings = RuntimeSettings(config.tunables)
    if lease is None:
        lease = LeaseService(storage, guild_id=config.guild_id, flush_interval=lambda: settings.current.flush_interval)
    # From here on the lease's expiry follows the live FLUSH_INTERVAL, which the writes follow: a
    # longer interval set at run time must not let the lease expire between two writes.
    lease.flush_interval = lambda: settings.current.flush_interval
    guild_id = config.guild_id
    names = NameService(storage, guild_id=guild_id, source=source)
    activity = ActivityService(
        storage,
        guild_id=guild_id,
        voice=VoiceTracker(voice_rules(settings), Calendar(config.timezone)),
        guard=build_guard(settings.current.spam_limit),
        names=names,
        clock=clock,
        # Voice time is checked against a monotonic clock: the system's with the system wall clock
        # (a fake wall clock comes with its own, or none).
        monotonic=monotonic if monotonic is not None or clock is not time.time else time.monotonic,
        recovery=recovery_file(config.database_url, config.guild_id),
        snapshot_every=lambda: settings.current.flush_interval,
        max_pending_rows=config.max_pending_rows,
        claim_lease=lambda release: lease.claim(release=release),
    )
    seasons = SeasonService(storage, activity, settings, clock=clock)
    activity.earliest_event = lambda: seasons.current.started_at
    activity.current_season = seasons.current_number
    rankings = Rankings(storage, activity, seasons, TopCache(lambda: settings.current.cache_ttl))
    cache = rankings.cache
    health = HealthMonitor(
        Sources(
            messages_counted=lambda: activity.messages_counted,
            voice_counting=lambda: len(activity.voice.counting_users()),
            buffered=activity.buffered,
            spilled_rows=lambda: activity.spilled_rows,
            unsaved_since=activity.unsaved_since,
            timestamps_clamped=lambda: activity.timestamps_clamped,
            role=lambda: lease.role,
            lease_holder=lambda: lease.current_holder,
            failing_since=lambda: activity.failing_since,
            write_waiting=activity.write_waiting,
            recovery_file_saved=lambda: activity.saved_to_disk,
            flush_interval=lambda: settings.current.flush_interval,
            cache_counts=lambda: (cache.hits, cache.misses),
            flush_failures=lambda: activity.flush_failures,
            spam_blocked=lambda: activity.guard.blocked,
        ),
        clock=clock,
    )
    activity.observe_flush = health.flushed
    membership = MembershipService(members, enabled=lambda: settings.current.hide_departed, clock=clock)
    privacy = PrivacyService(storage, guild_id=guild_id, activity=activity, names=names)
    names.withheld = privacy.stopped_live  # /privacy stop: no name stored
    rankings.unlisted = lambda: privacy.unlisted  # /privacy hide: ranks pass over them, as boards do
    boards = BoardService(
        storage,
        guild_id=guild_id,
        rankings=rankings,
        names=names,
        seasons=seasons,
        settings=settings,
        clock=clock,
        membership=membership,
        privacy=privacy,
    )

    def apply(old: Tunables, new: Tunables) -> None:
        if (new.voice_count_deafened, new.voice_count_alone) != (old.voice_count_deafened, old.voice_count_alone):
            activity.voice.rules_changed(activity.voice_now())
        if new.spam_limit != old.spam_limit:
            if new.spam_limit is not None and isinstance(activity.guard, SpamGuard):
                activity.guard.reconfigure(new.spam_limit.burst, new.spam_limit.refill_rate)
            else:
                activity.guard = build_guard(new.spam_limit)
        if old.hide_departed and not new.hide_departed:
            membership.clear()  # off: nothing held, nothing asked

    settings.subscribe(apply)
    store = SettingsStore(settings, storage, guild_id)
    return Services(
        settings, storage, names, activity, seasons, rankings, boards, health, store, lease, membership, privacy
    )
