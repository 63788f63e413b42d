"""Every write rule of rules.yaml purges what upstream-api.md "Invalidation" names, and nothing else:
warm the GETs, write through the proxy, then covered GETs are MISSes with the new data and the others
stay HITs. Also the award of another user's badge, and the manual invalidation endpoints."""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from proxy.core.rulesfile import load_rules

RULES = load_rules(Path(__file__).resolve().parents[2] / "rules.yaml")
WRITE_RULES = sorted(r.name for r in RULES.rules if r.method != "GET")
GET_ROUTES = {r.name: r for r in RULES.rules if r.method == "GET"}
REFRESHED = {r.name for r in RULES.rules if r.refresh_after_purge}  # refetched by a write that empties them

READ_URLS = {
    "user_profile": "/api/v1/users/profile", "user_full_profile": "/api/v1/users/profile/full",
    "user_preferences": "/api/v1/users/preferences", "user_languages": "/api/v1/users/languages",
    "user_accessibility": "/api/v1/users/accessibility", "user_interests": "/api/v1/users/interests",
    "user_stats": "/api/v1/users/stats", "auth_me": "/api/v1/auth/me",
    "achievements": "/api/v1/achievements", "achievements_summary": "/api/v1/achievements/summary",
    "achievements_stats": "/api/v1/achievements/stats", "achievement": "/api/v1/achievements/{achievement_id}",
    "achievements_by_type": "/api/v1/achievements/type/gold", "achievement_types": "/api/v1/achievements/types",
    "leaderboard": "/api/v1/achievements/leaderboard?limit=10&offset=0",
    "recent_achievements": "/api/v1/achievements/recent?limit=20",
}
USER_READS = ["user_profile", "user_full_profile", "user_preferences", "user_languages", "user_accessibility",
              "user_interests", "user_stats", "auth_me"]
ACHIEVEMENT_READS = ["achievements", "achievements_summary", "achievements_stats", "achievement",
                     "achievements_by_type"]
GLOBAL_READS = ["leaderboard", "recent_achievements", "achievement_types"]


@dataclass(frozen=True)
class Case:
    """A write and what it must do to the caller's warm entries (upstream-api.md, "Invalidation")."""

    method: str
    path: str  # {language_id}, {interest_id} are the seeded user's items
    body: dict | None
    changed: list[str]  # purged, and the backend now shows a higher body.version
    purged: list[str] = field(default_factory=list)  # purged, data unchanged: MISS, same version
    kept: list[str] = field(default_factory=list)  # not purged: still a HIT with the warm body


def _except(*names: str, among: list[str]) -> list[str]:
    return [n for n in among if n not in names]


# /auth/me is the complete profile (upstream-api.md "What each read shows"): every per-user write
# changes it, achievement points included.
_ACHIEVEMENT_WRITE = dict(
    changed=["achievements", "achievements_summary", "achievements_stats", "achievements_by_type", "user_stats",
             "user_full_profile", "auth_me", "leaderboard", "recent_achievements"],
    purged=["achievement", "achievement_types"],  # a badge's own version and the static types do not move
    kept=_except("user_stats", "user_full_profile", "auth_me", among=USER_READS))
_LIST_KEPT = ["user_profile", "user_preferences", "user_stats", "achievements", "leaderboard"]

CASES = {
    # 1. profile update: every user:{user_id}:* key; the leaderboard keeps the old name until its TTL
    "update_profile": Case("PUT", "/api/v1/users/profile", {"display_name": "Renamed", "bio": "new bio"},
                           changed=["user_profile", "auth_me", "user_full_profile"],
                           purged=_except("user_profile", "auth_me", "user_full_profile", among=USER_READS),
                           kept=ACHIEVEMENT_READS + GLOBAL_READS),
    # 3. preferences: that key and the full profile
    "update_preferences": Case("POST", "/api/v1/users/preferences", {"theme": "light", "language": "sw",
                                                                       "notifications_enabled": False},
                               changed=["user_preferences", "user_full_profile", "auth_me"],
                               kept=["user_profile", "user_languages", "user_stats", "achievements"]),
    # 4. languages / interests / accessibility: that key and the full profile
    "add_language": Case("POST", "/api/v1/users/languages", {"language_code": "en"},
                         changed=["user_languages", "user_full_profile", "auth_me"], kept=_LIST_KEPT + ["user_interests"]),
    "delete_language": Case("DELETE", "/api/v1/users/languages/{language_id}", None,
                            changed=["user_languages", "user_full_profile", "auth_me"], kept=_LIST_KEPT + ["user_interests"]),
    "add_interest": Case("POST", "/api/v1/users/interests", {"interest": "civics"},
                         changed=["user_interests", "user_full_profile", "auth_me"], kept=_LIST_KEPT + ["user_languages"]),
    "delete_interest": Case("DELETE", "/api/v1/users/interests/{interest_id}", None,
                            changed=["user_interests", "user_full_profile", "auth_me"], kept=_LIST_KEPT + ["user_languages"]),
    "update_accessibility": Case("POST", "/api/v1/users/accessibility", {"font_size": "x-large",
                                                                          "high_contrast": True},
                                 changed=["user_accessibility", "user_full_profile", "auth_me"],
                                 kept=_LIST_KEPT + ["user_languages"]),
    # 2. achievement award (for the caller): their achievements, stats, full profile, every global key
    "create_achievement": Case("POST", "/api/v1/achievements", {"badge_type": "silver"}, **_ACHIEVEMENT_WRITE),
    "award_achievement": Case("POST", "/api/v1/achievements/award",
                              {"badge_type": "platinum", "achievement_data": {"quiz": 7}}, **_ACHIEVEMENT_WRITE),
}


def new_user() -> str:
    return str(uuid.uuid4())


async def warm(proxy, user: str, names: list[str], ids: dict) -> dict[str, object]:
    """GET each route twice: MISS then HIT, so a later MISS can only come from a purge."""
    out = {}
    for name in names:
        url = READ_URLS[name].format(**ids)
        first, second = await proxy.get(url, user), await proxy.get(url, user)
        assert first.status == 200 and first.code == 200, (name, first)
        assert (first.x_cache, second.x_cache) == ("MISS", "HIT"), (name, first, second)
        out[name] = second
    return out


async def assert_after(proxy, user: str, ids: dict, warm_replies: dict, changed=(), purged=(), kept=(),
                       write_version: int | None = None) -> None:
    await proxy.background_fills()
    for name in changed:
        reply = await proxy.get(READ_URLS[name].format(**ids), user)
        # A shared page with refresh_after_purge was read (warmed), so the write refetched it: a hit, new data.
        assert reply.x_cache == ("HIT" if name in REFRESHED else "MISS"), (name, reply)
        assert reply.version > warm_replies[name].version, (name, reply)  # the new data
        if write_version is not None and name != "achievement":
            assert reply.version >= write_version, (name, reply)
    for name in purged:
        reply = await proxy.get(READ_URLS[name].format(**ids), user)
        assert reply.x_cache == "MISS" and reply.status == 200, (name, reply)
    for name in kept:
        reply = await proxy.get(READ_URLS[name].format(**ids), user)
        assert reply.x_cache == "HIT" and reply.body == warm_replies[name].body, (name, reply)


def test_every_write_rule_has_a_case():
    assert set(WRITE_RULES) - set(CASES) == set(), "write rules without a case in CASES"
    assert set(CASES) - set(WRITE_RULES) == set(), "CASES names rules that rules.yaml no longer has"
    for name, case in CASES.items():
        names = case.changed + case.purged + case.kept
        assert len(names) == len(set(names)) and set(names) <= set(READ_URLS), name
        assert case.changed and case.kept, name  # every case proves both purging and sparing
        segments = tuple(case.path.format(language_id="1", interest_id="1").split("/")[1:])
        assert RULES.match(case.method, segments)[0].name == name


@pytest.mark.parametrize("name", sorted(CASES))
async def test_write_purges_exactly_what_its_rule_names(name, proxy, backend):
    case = CASES[name]
    user, other = new_user(), new_user()
    ids = await backend.seed(user)
    await backend.seed(other)
    warm_replies = await warm(proxy, user, case.changed + case.purged + case.kept, ids)
    other_warm = await warm(proxy, other, ["user_profile", "user_full_profile", "achievements"], ids)
    before = await backend.requests()

    written = await proxy.request(case.method, case.path.format(**ids), user, json=case.body)
    assert written.status == 200 and written.code == 200, written
    assert written.x_cache == "BYPASS", written
    await proxy.background_fills()
    refetched = [n for n in case.changed if n in REFRESHED]
    assert await backend.requests() - before == 1 + len(refetched)  # forwarded once; the shared pages refetched

    await assert_after(proxy, user, ids, warm_replies, case.changed, case.purged, case.kept, written.version)
    # another user's entries are never touched by this user's write
    await assert_after(proxy, other, ids, other_warm, kept=["user_profile", "user_full_profile", "achievements"])


async def test_award_to_another_user_purges_theirs_and_global_not_the_callers(proxy, backend):
    caller, target = new_user(), new_user()
    ids = await backend.seed(caller)
    await backend.seed(target)
    mine = ["user_profile", "user_stats", "user_full_profile", "achievements", "achievements_summary"]
    theirs = ["achievements", "achievements_summary", "achievements_stats", "user_stats", "user_full_profile",
              "auth_me", "user_profile"]
    warm_caller = await warm(proxy, caller, mine, ids)
    warm_target = await warm(proxy, target, theirs + GLOBAL_READS, ids)

    written = await proxy.request("POST", "/api/v1/achievements/award", caller,
                                  json={"user_id": target, "badge_type": "bronze"})
    assert written.status == 200 and written.code == 200 and written.json["body"]["user_id"] == target, written

    await assert_after(proxy, target, ids, warm_target,
                       changed=["achievements", "achievements_summary", "achievements_stats", "user_stats",
                                "user_full_profile", "auth_me", "leaderboard", "recent_achievements"],
                       purged=["achievement_types"], kept=["user_profile"], write_version=written.version)
    await assert_after(proxy, caller, ids, warm_caller, kept=mine)  # the caller's namespaces are untouched


# ------------------------------------------------------------------------------ manual invalidation

USERS_EP = "/api/v1/users/cache/invalidate"
ACHIEVEMENTS_EP = "/api/v1/achievements/cache/invalidate"
GLOBAL_EP = "/api/v1/achievements/cache/invalidate/global"


async def invalidate(proxy, backend, path: str, user: str | None = None, admin: bool = False, json=None,
                     token: str | None = None):
    """POST an invalidation; it is answered by the proxy: the backend never sees it."""
    before = await backend.requests()
    reply = await proxy.request("POST", path, user, json=json, token=proxy.admin_token if admin else token)
    assert await backend.requests() == before, reply
    return reply


def assert_invalidated(reply, namespaces: list[str]) -> None:
    assert reply.status == 200, reply
    assert reply.code == 200 and reply.json["body"]["invalidated"] == namespaces, reply
    assert set(reply.json["header"]) >= {"requestRefId", "responseCode", "responseMessage", "customerMessage",
                                         "timestamp"}


async def test_own_jwt_purges_own_namespaces_only(proxy, backend):
    a, b = new_user(), new_user()
    ids = await backend.seed(a)
    warm_a = await warm(proxy, a, ["user_profile", "user_stats", "achievements"], ids)
    warm_b = await warm(proxy, b, ["user_profile", "achievements"], ids)

    assert_invalidated(await invalidate(proxy, backend, USERS_EP, a), [f"user:{{{a}}}:*"])
    await assert_after(proxy, a, ids, warm_a, purged=["user_profile", "user_stats"], kept=["achievements"])
    await assert_after(proxy, b, ids, warm_b, kept=["user_profile", "achievements"])

    warm_a["user_profile"] = await proxy.get(READ_URLS["user_profile"], a)  # refilled by the check above
    assert warm_a["user_profile"].x_cache == "HIT"
    assert_invalidated(await invalidate(proxy, backend, ACHIEVEMENTS_EP, a), [f"achievements:{{{a}}}:*"])
    await assert_after(proxy, a, ids, warm_a, purged=["achievements"], kept=["user_profile"])
    await assert_after(proxy, b, ids, warm_b, kept=["user_profile", "achievements"])

    refused = await invalidate(proxy, backend, USERS_EP, a, json={"user_id": b})  # not someone else's
    assert refused.status == 403 and "detail" in refused.json, refused
    await assert_after(proxy, b, ids, warm_b, kept=["user_profile"])


async def test_admin_purges_another_users_namespace(proxy, backend):
    a, b = new_user(), new_user()
    ids = await backend.seed(a)
    warm_a = await warm(proxy, a, ["user_profile", "achievements"], ids)
    warm_b = await warm(proxy, b, ["user_profile", "achievements"], ids)

    assert_invalidated(await invalidate(proxy, backend, USERS_EP, admin=True, json={"user_id": b}),
                       [f"user:{{{b}}}:*"])
    await assert_after(proxy, b, ids, warm_b, purged=["user_profile"], kept=["achievements"])
    await assert_after(proxy, a, ids, warm_a, kept=["user_profile", "achievements"])

    assert_invalidated(await invalidate(proxy, backend, ACHIEVEMENTS_EP, admin=True, json={"user_id": a}),
                       [f"achievements:{{{a}}}:*"])
    await assert_after(proxy, a, ids, warm_a, purged=["achievements"], kept=["user_profile"])

    missing = await invalidate(proxy, backend, USERS_EP, admin=True)  # admin must name the user
    assert missing.status == 422 and "detail" in missing.json, missing
    anonymous = await invalidate(proxy, backend, USERS_EP)
    assert anonymous.status == 401 and "detail" in anonymous.json, anonymous


async def test_global_invalidation_needs_the_admin_credential(proxy, backend):
    a = new_user()
    ids = await backend.seed(a)
    names = ["leaderboard", "recent_achievements", "achievement_types", "achievements", "user_profile"]
    warm_a = await warm(proxy, a, names, ids)

    forbidden = await invalidate(proxy, backend, GLOBAL_EP, a)
    assert forbidden.status == 403 and "detail" in forbidden.json, forbidden
    unauthenticated = await invalidate(proxy, backend, GLOBAL_EP)
    assert unauthenticated.status == 401 and "detail" in unauthenticated.json, unauthenticated
    wrong_admin = await invalidate(proxy, backend, GLOBAL_EP, token="not-the-admin-token")
    assert wrong_admin.status == 401, wrong_admin
    await assert_after(proxy, a, ids, warm_a, kept=names)  # the refusals purged nothing

    assert_invalidated(await invalidate(proxy, backend, GLOBAL_EP, admin=True), ["achievements:global:*"])
    await assert_after(proxy, a, ids, warm_a, purged=["leaderboard", "recent_achievements", "achievement_types"],
                       kept=["achievements", "user_profile"])
