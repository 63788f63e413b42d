"""SQLite storage of the stand-in backend: schema, the global version counter, and every query.

Owns all data the stand-in shows. One ``sqlite3`` connection (``:memory:`` by default); every method
is synchronous and short, so within the single asyncio thread a write's read-modify-write is atomic.

Versions: ``meta('counter')`` is one global counter that only grows (it persists with a file DB).
Each successful write bumps it once (``BEGIN IMMEDIATE`` .. ``COMMIT``) and stamps the new value on
every resource the write changed:

* ``users.v_profile``       display_name / bio      (PUT /users/profile)
* ``users.v_preferences``   theme / language / ...  (POST /users/preferences)
* ``users.v_languages``     the languages list      (POST, DELETE /users/languages)
* ``users.v_interests``     the interests list      (POST, DELETE /users/interests)
* ``users.v_accessibility`` font_size / contrast    (POST /users/accessibility)
* ``users.v_achievements``  that user's badges      (POST /achievements, POST /achievements/award)
* ``users.v_onboarding``    onboarding progress     (PUT /onboarding/progress, POST /onboarding/complete,
                                                     POST /onboarding/reset)
* ``users.v_reading``       reading progress        (PUT /reading/progress; no cached read shows it)
* ``meta('achievements')``  last badge awarded to anyone (same two writes)

A user created on first sight (any ``sub``) starts with every version at 0 and does not bump the
counter. How each GET derives its ``body.version`` from these is listed in ``standin/app.py``.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, Iterator

# Badge types of the katiba360 backend (schemas.BadgeType) with the points each one is worth.
BADGE_TYPES: dict[str, dict[str, Any]] = {
    "bronze": {"name": "Bronze Badge", "points": 10, "icon": "/badges/bronze.svg",
               "description": "First steps in learning the Constitution"},
    "silver": {"name": "Silver Badge", "points": 25, "icon": "/badges/silver.svg",
               "description": "Steady reader of the Constitution"},
    "gold": {"name": "Gold Badge", "points": 50, "icon": "/badges/gold.svg",
             "description": "Deep knowledge of the Constitution"},
    "platinum": {"name": "Platinum Badge", "points": 100, "icon": "/badges/platinum.svg",
                 "description": "Constitution champion"},
}
THEMES = ("light", "dark")
UI_LANGUAGES = ("en", "sw")
FONT_SIZES = ("small", "medium", "large", "x-large")
# The onboarding flow of the katiba360 app, in order; GET /onboarding/steps lists them.
ONBOARDING_STEPS = ("welcome", "profile", "languages", "interests", "accessibility", "finish")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('counter', 0), ('achievements', 0);
CREATE TABLE IF NOT EXISTS users (
    id TEXT PRIMARY KEY,
    display_name TEXT NOT NULL,
    bio TEXT NOT NULL DEFAULT '',
    active INTEGER NOT NULL DEFAULT 1,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    theme TEXT NOT NULL DEFAULT 'light',
    language TEXT NOT NULL DEFAULT 'en',
    notifications_enabled INTEGER NOT NULL DEFAULT 1,
    font_size TEXT NOT NULL DEFAULT 'medium',
    high_contrast INTEGER NOT NULL DEFAULT 0,
    points INTEGER NOT NULL DEFAULT 0,
    badges INTEGER NOT NULL DEFAULT 0,
    v_profile INTEGER NOT NULL DEFAULT 0,
    v_preferences INTEGER NOT NULL DEFAULT 0,
    v_languages INTEGER NOT NULL DEFAULT 0,
    v_interests INTEGER NOT NULL DEFAULT 0,
    v_accessibility INTEGER NOT NULL DEFAULT 0,
    v_achievements INTEGER NOT NULL DEFAULT 0,
    onboarding_step TEXT NOT NULL DEFAULT 'welcome',
    onboarding_completed INTEGER NOT NULL DEFAULT 0,
    v_onboarding INTEGER NOT NULL DEFAULT 0,
    reading_section TEXT,
    reading_percent INTEGER NOT NULL DEFAULT 0,
    v_reading INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS users_rank ON users (points DESC, badges DESC, id) WHERE badges > 0;
CREATE TABLE IF NOT EXISTS languages (
    id INTEGER PRIMARY KEY AUTOINCREMENT, user_id TEXT NOT NULL, language_code TEXT NOT NULL,
    created_at TEXT NOT NULL, UNIQUE (user_id, language_code));
CREATE TABLE IF NOT EXISTS interests (
    id INTEGER PRIMARY KEY AUTOINCREMENT, user_id TEXT NOT NULL, interest TEXT NOT NULL,
    created_at TEXT NOT NULL, UNIQUE (user_id, interest));
CREATE TABLE IF NOT EXISTS achievements (
    id TEXT PRIMARY KEY, user_id TEXT NOT NULL, badge_type TEXT NOT NULL,
    achievement_data TEXT NOT NULL, points INTEGER NOT NULL, earned_at TEXT NOT NULL,
    version INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS achievements_user ON achievements (user_id, version);
CREATE INDEX IF NOT EXISTS achievements_recent ON achievements (version);
"""

# Columns added after the first release of the schema: ALTERed into older database files.
ADDED_COLUMNS = (("onboarding_step", "TEXT NOT NULL DEFAULT 'welcome'"),
                 ("onboarding_completed", "INTEGER NOT NULL DEFAULT 0"),
                 ("v_onboarding", "INTEGER NOT NULL DEFAULT 0"), ("reading_section", "TEXT"),
                 ("reading_percent", "INTEGER NOT NULL DEFAULT 0"), ("v_reading", "INTEGER NOT NULL DEFAULT 0"))


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


class NotFound(Exception):
    """A row the caller named does not exist (becomes an HTTP-200 envelope with responseCode 404)."""


class Conflict(Exception):
    """The write would duplicate an existing row (becomes responseCode 400)."""


class Store:
    """All reads and writes of the stand-in; each public method is one 'request worth' of DB work."""

    def __init__(self, path: str = ":memory:") -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.row_factory = sqlite3.Row
        self.conn.executescript(SCHEMA)
        have = {r[1] for r in self.conn.execute("PRAGMA table_info(users)")}
        for name, decl in ADDED_COLUMNS:  # a database file written by an older stand-in
            if name not in have:
                self.conn.execute(f"ALTER TABLE users ADD COLUMN {name} {decl}")

    def close(self) -> None:
        self.conn.close()

    # -- versions ---------------------------------------------------------------------------
    def _meta(self, key: str) -> int:
        return self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0]

    def counter(self) -> int:
        return self._meta("counter")

    @contextmanager
    def _write(self) -> Iterator[int]:
        """One transaction; yields the freshly bumped global version."""
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            c.execute("UPDATE meta SET value = value + 1 WHERE key = 'counter'")
            yield self._meta("counter")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        c.execute("COMMIT")

    # -- users ------------------------------------------------------------------------------
    def _user(self, uid: str) -> sqlite3.Row | None:
        return self.conn.execute("SELECT * FROM users WHERE id = ?", (uid,)).fetchone()

    def ensure_user(self, uid: str, active: bool = True) -> sqlite3.Row:
        """The user row, created on first sight (versions 0, no counter bump)."""
        row = self._user(uid)
        if row is None:
            ts = now_iso()
            self.conn.execute(
                "INSERT OR IGNORE INTO users (id, display_name, created_at, updated_at, active)"
                " VALUES (?, ?, ?, ?, ?)", (uid, f"User {uid[:8]}", ts, ts, int(active)))
            row = self._user(uid)
        return row

    def set_active(self, uid: str, active: bool) -> None:
        self.ensure_user(uid, active)
        self.conn.execute("UPDATE users SET active = ? WHERE id = ?", (int(active), uid))

    # -- per-user reads ---------------------------------------------------------------------
    @staticmethod
    def _profile(u: sqlite3.Row) -> dict[str, Any]:
        return {"id": u["id"], "user_id": u["id"], "display_name": u["display_name"], "bio": u["bio"],
                "avatar_url": None, "created_at": u["created_at"], "updated_at": u["updated_at"],
                "version": u["v_profile"]}

    def profile(self, uid: str) -> dict[str, Any]:
        return self._profile(self.ensure_user(uid))

    def me(self, uid: str) -> dict[str, Any]:
        """The complete profile, as the backend's /auth/me: every per-user write changes it."""
        u = self.ensure_user(uid)
        parts = self._complete(uid)
        out = {"id": u["id"], "user_id": u["id"], "display_name": u["display_name"], "bio": u["bio"],
               "auth_provider": "google", "is_active": bool(u["active"]), "created_at": u["created_at"],
               "preferences": parts["preferences"], "languages": parts["languages"]["languages"],
               "interests": parts["interests"]["interests"], "accessibility": parts["accessibility"],
               "achievement_points": u["points"], "onboarding": parts["onboarding"]}
        out["version"] = max(p["version"] for p in parts.values())
        return out

    def _complete(self, uid: str) -> dict[str, dict[str, Any]]:
        """The parts of the complete profile (each with its own version)."""
        return {"profile": self.profile(uid), "preferences": self.preferences(uid),
                "languages": self.languages(uid), "interests": self.interests(uid),
                "accessibility": self.accessibility(uid), "stats": self.user_stats(uid),
                "onboarding": self.onboarding(uid)}

    def onboarding(self, uid: str) -> dict[str, Any]:
        u = self.ensure_user(uid)
        step = u["onboarding_step"]
        done = list(ONBOARDING_STEPS[:ONBOARDING_STEPS.index(step)]) if step in ONBOARDING_STEPS else []
        return {"current_step": step, "completed_steps": done, "completed": bool(u["onboarding_completed"]),
                "total_steps": len(ONBOARDING_STEPS), "version": u["v_onboarding"]}

    def reading(self, uid: str) -> dict[str, Any]:
        u = self.ensure_user(uid)
        return {"section": u["reading_section"], "percent": u["reading_percent"], "version": u["v_reading"]}

    def preferences(self, uid: str) -> dict[str, Any]:
        u = self.ensure_user(uid)
        return {"user_id": uid, "theme": u["theme"], "language": u["language"],
                "notifications_enabled": bool(u["notifications_enabled"]), "version": u["v_preferences"]}

    def accessibility(self, uid: str) -> dict[str, Any]:
        u = self.ensure_user(uid)
        return {"user_id": uid, "font_size": u["font_size"], "high_contrast": bool(u["high_contrast"]),
                "version": u["v_accessibility"]}

    def languages(self, uid: str) -> dict[str, Any]:
        u = self.ensure_user(uid)
        rows = self.conn.execute("SELECT id, language_code, created_at FROM languages WHERE user_id = ?"
                                 " ORDER BY id", (uid,)).fetchall()
        return {"languages": [dict(r) for r in rows], "total": len(rows), "version": u["v_languages"]}

    def interests(self, uid: str) -> dict[str, Any]:
        u = self.ensure_user(uid)
        rows = self.conn.execute("SELECT id, interest, created_at FROM interests WHERE user_id = ?"
                                 " ORDER BY id", (uid,)).fetchall()
        return {"interests": [dict(r) for r in rows], "total": len(rows), "version": u["v_interests"]}

    @staticmethod
    def _achievement(r: sqlite3.Row) -> dict[str, Any]:
        b = BADGE_TYPES.get(r["badge_type"], {})
        return {"id": r["id"], "user_id": r["user_id"], "badge_type": r["badge_type"],
                "badge_name": b.get("name"), "badge_description": b.get("description"),
                "badge_icon": b.get("icon"), "points": r["points"], "earned_at": r["earned_at"],
                "achievement_data": json.loads(r["achievement_data"]), "version": r["version"]}

    def _achievement_rows(self, uid: str, badge_type: str | None = None) -> list[dict[str, Any]]:
        sql, args = "SELECT * FROM achievements WHERE user_id = ?", [uid]
        if badge_type is not None:
            sql, args = sql + " AND badge_type = ?", args + [badge_type]
        rows = self.conn.execute(sql + " ORDER BY version DESC", args).fetchall()
        return [self._achievement(r) for r in rows]

    def achievements(self, uid: str) -> dict[str, Any]:
        u = self.ensure_user(uid)
        items = self._achievement_rows(uid)
        return {"achievements": items, "total_achievements": len(items), "version": u["v_achievements"]}

    def achievements_by_type(self, uid: str, badge_type: str) -> dict[str, Any]:
        u = self.ensure_user(uid)
        items = self._achievement_rows(uid, badge_type)
        return {"badge_type": badge_type, "badges": items, "total_badges": len(items),
                "version": u["v_achievements"]}

    def achievement(self, uid: str, achievement_id: str) -> dict[str, Any]:
        """One of the caller's achievements; NotFound carries the user's achievements version."""
        u = self.ensure_user(uid)
        r = self.conn.execute("SELECT * FROM achievements WHERE id = ? AND user_id = ?",
                              (achievement_id, uid)).fetchone()
        if r is None:
            raise NotFound(u["v_achievements"])
        return {"achievement": self._achievement(r), "version": r["version"]}

    def _by_type(self, uid: str) -> dict[str, int]:
        counts = dict.fromkeys(BADGE_TYPES, 0)
        for r in self.conn.execute("SELECT badge_type, COUNT(*) FROM achievements WHERE user_id = ?"
                                   " GROUP BY badge_type", (uid,)):
            counts[r[0]] = r[1]
        return counts

    def achievement_summary(self, uid: str) -> dict[str, Any]:
        u = self.ensure_user(uid)
        by_type = self._by_type(uid)
        earned_types = sum(1 for n in by_type.values() if n)
        return {"summary": {"total_achievements": u["badges"], "total_points": u["points"],
                            "by_badge_type": by_type, "recent": self._achievement_rows(uid)[:5],
                            "completion_percentage": round(100 * earned_types / len(BADGE_TYPES), 1)},
                "version": u["v_achievements"]}

    def achievement_stats(self, uid: str) -> dict[str, Any]:
        u = self.ensure_user(uid)
        first, last = self.conn.execute("SELECT MIN(earned_at), MAX(earned_at) FROM achievements"
                                        " WHERE user_id = ?", (uid,)).fetchone()
        return {"stats": {"total_achievements": u["badges"], "total_points": u["points"],
                          "by_badge_type": self._by_type(uid), "first_earned_at": first,
                          "last_earned_at": last}, "version": u["v_achievements"]}

    def user_stats(self, uid: str) -> dict[str, Any]:
        u = self.ensure_user(uid)
        return {"stats": {"total_achievements": u["badges"], "achievement_points": u["points"],
                          "badges_by_type": self._by_type(uid), "member_since": u["created_at"]},
                "version": u["v_achievements"]}

    def full_profile(self, uid: str) -> dict[str, Any]:
        parts = self._complete(uid)
        body: dict[str, Any] = dict(parts)
        body["achievement_points"] = parts["stats"]["stats"]["achievement_points"]
        body["version"] = max(p["version"] for p in parts.values())
        return body

    # -- global reads -----------------------------------------------------------------------
    def leaderboard(self, limit: int, offset: int) -> dict[str, Any]:
        rows = self.conn.execute(
            "SELECT id, display_name, points, badges, v_profile, v_achievements FROM users"
            " WHERE badges > 0 ORDER BY points DESC, badges DESC, id LIMIT ? OFFSET ?",
            (limit, offset)).fetchall()
        total = self.conn.execute("SELECT COUNT(*) FROM users WHERE badges > 0").fetchone()[0]
        board = [{"rank": offset + i + 1, "user_id": r["id"], "display_name": r["display_name"],
                  "total_points": r["points"], "badge_count": r["badges"],
                  "version": max(r["v_profile"], r["v_achievements"])} for i, r in enumerate(rows)]
        version = max([self._meta("achievements")] + [r["v_profile"] for r in rows])
        return {"leaderboard": board, "limit": limit, "offset": offset, "total_users": total,
                "version": version}

    def recent(self, limit: int) -> dict[str, Any]:
        rows = self.conn.execute(
            "SELECT a.*, u.display_name, u.v_profile FROM achievements a JOIN users u ON u.id = a.user_id"
            " ORDER BY a.version DESC LIMIT ?", (limit,)).fetchall()
        items = []
        for r in rows:
            item = self._achievement(r)
            item["display_name"] = r["display_name"]
            item["version"] = max(r["version"], r["v_profile"])
            items.append(item)
        version = max([self._meta("achievements")] + [r["v_profile"] for r in rows])
        return {"recent_achievements": items, "total_shown": len(items), "version": version}

    @staticmethod
    def badge_types() -> dict[str, Any]:
        return {"badge_types": [{"badge_type": k, "badge_name": v["name"], "points": v["points"],
                                 "badge_description": v["description"], "badge_icon": v["icon"]}
                                for k, v in BADGE_TYPES.items()], "version": 0}

    # -- writes -----------------------------------------------------------------------------
    def update_profile(self, uid: str, fields: dict[str, Any]) -> dict[str, Any]:
        self.ensure_user(uid)
        with self._write() as v:
            self._update(uid, fields, "v_profile", v)
        return self.profile(uid)

    def update_preferences(self, uid: str, fields: dict[str, Any]) -> dict[str, Any]:
        self.ensure_user(uid)
        with self._write() as v:
            self._update(uid, fields, "v_preferences", v)
        return self.preferences(uid)

    def update_accessibility(self, uid: str, fields: dict[str, Any]) -> dict[str, Any]:
        self.ensure_user(uid)
        with self._write() as v:
            self._update(uid, fields, "v_accessibility", v)
        return self.accessibility(uid)

    def set_onboarding(self, uid: str, step: str, completed: bool) -> dict[str, Any]:
        self.ensure_user(uid)
        with self._write() as v:
            self._update(uid, {"onboarding_step": step, "onboarding_completed": completed}, "v_onboarding", v)
        return self.onboarding(uid)

    def set_reading(self, uid: str, section: str, percent: int) -> dict[str, Any]:
        self.ensure_user(uid)
        with self._write() as v:
            self._update(uid, {"reading_section": section, "reading_percent": percent}, "v_reading", v)
        return self.reading(uid)

    def _update(self, uid: str, fields: dict[str, Any], vcol: str, v: int) -> None:
        cols = {k: (int(x) if isinstance(x, bool) else x) for k, x in fields.items()}
        cols[vcol] = v
        if vcol == "v_profile":  # updated_at is shown by the profile only
            cols["updated_at"] = now_iso()
        assigns = ", ".join(f"{k} = ?" for k in cols)  # keys come from the validated schema only
        self.conn.execute(f"UPDATE users SET {assigns} WHERE id = ?", (*cols.values(), uid))

    def add_item(self, table: str, uid: str, value: str) -> dict[str, Any]:
        """Add a language (table 'languages') or an interest ('interests'); Conflict if present."""
        col = "language_code" if table == "languages" else "interest"
        self.ensure_user(uid)
        if self.conn.execute(f"SELECT 1 FROM {table} WHERE user_id = ? AND {col} = ?",
                             (uid, value)).fetchone():
            raise Conflict(value)
        with self._write() as v:
            cur = self.conn.execute(f"INSERT INTO {table} (user_id, {col}, created_at) VALUES (?, ?, ?)",
                                    (uid, value, now_iso()))
            self.conn.execute(f"UPDATE users SET v_{table} = ? WHERE id = ?", (v, uid))
        return {"item": {"id": cur.lastrowid, col: value}, **getattr(self, table)(uid)}

    def delete_item(self, table: str, uid: str, item_id: int) -> dict[str, Any]:
        self.ensure_user(uid)
        if not self.conn.execute(f"SELECT 1 FROM {table} WHERE id = ? AND user_id = ?",
                                 (item_id, uid)).fetchone():
            raise NotFound(item_id)
        with self._write() as v:
            self.conn.execute(f"DELETE FROM {table} WHERE id = ?", (item_id,))
            self.conn.execute(f"UPDATE users SET v_{table} = ? WHERE id = ?", (v, uid))
        return {"deleted_id": item_id, **getattr(self, table)(uid)}

    def award(self, uid: str, badge_type: str, data: dict[str, Any]) -> dict[str, Any]:
        """Give ``uid`` (created if unknown) a badge; bumps their achievements and the global one."""
        self.ensure_user(uid)
        points = BADGE_TYPES[badge_type]["points"]
        aid = str(uuid.uuid4())
        with self._write() as v:
            self.conn.execute(
                "INSERT INTO achievements (id, user_id, badge_type, achievement_data, points, earned_at,"
                " version) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (aid, uid, badge_type, json.dumps(data), points, now_iso(), v))
            self.conn.execute("UPDATE users SET points = points + ?, badges = badges + 1,"
                              " v_achievements = ? WHERE id = ?", (points, v, uid))
            self.conn.execute("UPDATE meta SET value = ? WHERE key = 'achievements'", (v,))
        row = self.conn.execute("SELECT * FROM achievements WHERE id = ?", (aid,)).fetchone()
        return {"achievement": self._achievement(row), "user_id": uid, "version": v}
