"""RuntimeSettings: live values, change notifications, the board→channel map."""

from __future__ import annotations

import pytest

from leaderboard_bot.config import Tunables
from tests.factories import runtime_settings, tunables


def test_current_starts_at_the_defaults_and_follows_updates() -> None:
    settings = runtime_settings(flush_interval=5.0)
    assert settings.current == tunables(flush_interval=5.0)
    new = settings.update(flush_interval=2.0, leaderboard_size=7)
    assert settings.current is new
    assert (new.flush_interval, new.leaderboard_size) == (2.0, 7)


def test_subscribers_get_old_and_new_and_can_unsubscribe() -> None:
    settings = runtime_settings()
    seen: list[tuple[float, float]] = []
    unsubscribe = settings.subscribe(lambda old, new: seen.append((old.cache_ttl, new.cache_ttl)))
    settings.update(cache_ttl=10.0)
    settings.update(cache_ttl=10.0)  # no change: nobody is told
    unsubscribe()
    unsubscribe()  # twice is harmless
    settings.update(cache_ttl=20.0)
    assert seen == [(30.0, 10.0)]


def test_a_failing_subscriber_does_not_stop_the_others() -> None:
    settings = runtime_settings()
    seen: list[Tunables] = []

    def broken(old: Tunables, new: Tunables) -> None:
        raise RuntimeError("listener bug")

    settings.subscribe(broken)
    settings.subscribe(lambda old, new: seen.append(new))
    new = settings.update(update_interval=90.0)
    assert seen == [new]


def test_an_unknown_setting_is_refused() -> None:
    with pytest.raises(TypeError):
        runtime_settings().update(no_such_setting=1)


def test_each_board_has_its_channel_read_live() -> None:
    settings = runtime_settings(chat_lb_channel_id=11, vc_lb_channel_id=22)
    assert (settings.board_channel("messages"), settings.board_channel("voice")) == (11, 22)
    settings.update(vc_lb_channel_id=33)
    assert settings.board_channel("voice") == 33
