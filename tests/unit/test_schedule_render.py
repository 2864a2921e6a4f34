"""`tm schedules list` as a person sees it (tm.client.render.schedules_table)."""

from __future__ import annotations

from tm.client.render import schedules_table

SCHEDULES = [
    {"name": "nightly-backup", "cron": "30 2 * * *", "timezone": "Europe/Berlin",
     "paused": False, "next_fire_at": "2026-11-28T01:30:00.000000Z", "last_fire_at": None,
     "command": "backup.sh --all\nsecond line"},
    {"name": "tick", "cron": "@every 1s", "timezone": "UTC", "paused": True,
     "next_fire_at": None, "last_fire_at": "2026-11-27T05:00:01.000000Z", "command": "x" * 300},
]


def test_one_line_per_schedule_with_state_and_short_times() -> None:
    lines = schedules_table(SCHEDULES, 120).splitlines()
    assert lines[0].split() == ["NAME", "CRON", "TIMEZONE", "STATE", "NEXT_FIRE_AT",
                                "LAST_FIRE_AT", "COMMAND"]
    assert lines[1].split()[:7] == ["nightly-backup", "30", "2", "*", "*", "*", "Europe/Berlin"]
    assert "active  2026-11-28T01:30:00Z  -" in lines[1]
    assert "backup.sh --all second" in lines[1]  # one line, newline shown as a space
    assert "paused  -" in lines[2] and "2026-11-27T05:00:01Z" in lines[2]
    assert len(lines) == 3 and all(len(line) <= 120 for line in lines)
    assert lines[2].endswith("...")


def test_no_schedules() -> None:
    assert schedules_table([], 80) == "no schedules"
