"""RecentReads: which of a user's own reads a purge emptied, within the demand window, bounded."""
from __future__ import annotations

from proxy.core.demand import RecentReads


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_purge_of_a_namespace_returns_the_users_reads_it_guards_once():
    reads = RecentReads(clock=Clock())
    reads.note("u1", "k:profile", {"gen:user:{u1}", "gen:user:{u1}:profile"}, 600, "profile")
    reads.note("u1", "k:summary", {"gen:achievements:{u1}"}, 600, "summary")
    assert [r.request for r in reads.emptied_by("u1", {"gen:user:{u1}"})] == ["profile"]
    assert reads.emptied_by("u1", {"gen:user:{u1}"}) == []  # forgotten once handed out
    assert [r.request for r in reads.emptied_by("u1", {"gen:achievements:{u1}"})] == ["summary"]


def test_another_users_purge_never_returns_this_users_reads():
    reads = RecentReads(clock=Clock())
    reads.note("victim", "k:v", {"gen:achievements:{victim}"}, 600, "victim's read")
    # The writer's purge names the victim's namespace (an award to them): not the writer's read.
    assert reads.emptied_by("writer", {"gen:achievements:{victim}"}) == []
    assert len(reads) == 1


def test_a_read_older_than_its_window_is_not_refreshed():
    clock = Clock()
    reads = RecentReads(clock=clock)
    reads.note("u1", "k", {"g"}, 600, "r")
    clock.now += 601
    assert reads.emptied_by("u1", {"g"}) == []
    assert len(reads) == 0


def test_memory_is_bounded_per_user_and_in_users():
    reads = RecentReads(max_users=3, max_per_user=2, clock=Clock())
    for i in range(5):
        reads.note("u1", f"k{i}", {"g"}, 600, i)
    assert [r.request for r in reads.emptied_by("u1", {"g"})] == [3, 4]
    for u in range(10):
        reads.note(f"user{u}", "k", {"g"}, 600, u)
    assert len(reads) == 3
    assert [r.request for r in reads.emptied_by("user9", {"g"})] == [9]
    assert reads.emptied_by("user0", {"g"}) == []


def test_reading_a_key_again_renews_its_window():
    clock = Clock()
    reads = RecentReads(clock=clock)
    reads.note("u1", "k", {"g"}, 600, "first")
    clock.now += 500
    reads.note("u1", "k", {"g"}, 600, "again")
    clock.now += 500
    assert [r.request for r in reads.emptied_by("u1", {"g"})] == ["again"]


# Shared entries (a rule whose key has no {user_id}): read by anyone, refetched by any writer's purge.

def test_a_shared_read_is_handed_to_whichever_writer_purges_it_and_only_once():
    reads = RecentReads(clock=Clock())
    reads.note(None, "k:board", {"gen:achievements:global"}, 600, "board")
    assert [r.request for r in reads.emptied_by("writer", {"gen:achievements:global"})] == ["board"]
    # Until it is read again, no later purge refetches it: each read pays for one refetch at most.
    assert reads.emptied_by("another writer", {"gen:achievements:global"}) == []


def test_a_users_purge_gets_their_own_reads_and_the_shared_ones_never_another_users():
    reads = RecentReads(clock=Clock())
    reads.note("victim", "k:v", {"gen:achievements:{victim}", "gen:achievements"}, 600, "victim's read")
    reads.note("writer", "k:w", {"gen:achievements:{writer}", "gen:achievements"}, 600, "writer's read")
    reads.note(None, "k:board", {"gen:achievements:global", "gen:achievements"}, 600, "board")
    emptied = reads.emptied_by("writer", {"gen:achievements"})
    assert sorted(r.request for r in emptied) == ["board", "writer's read"]
    assert len(reads) == 1  # the victim's, kept for the victim's own writes


def test_one_purge_hands_out_a_bounded_number_of_shared_reads_the_latest_first():
    clock = Clock()
    reads = RecentReads(max_shared=6, max_shared_per_purge=2, clock=clock)
    for i in range(8):
        reads.note(None, f"k{i}", {"g"}, 600, i)
        clock.now += 1
    assert len(reads) == 6  # the oldest two forgotten
    assert [r.request for r in reads.emptied_by("w", {"g"})] == [7, 6]
    # The others the purge emptied are forgotten too: a refetch of them now would be a guess.
    assert reads.emptied_by("w", {"g"}) == [] and len(reads) == 0


def test_a_shared_read_older_than_its_window_is_not_refreshed():
    clock = Clock()
    reads = RecentReads(clock=clock)
    reads.note(None, "k", {"g"}, 600, "r")
    clock.now += 601
    assert reads.emptied_by("w", {"g"}) == [] and len(reads) == 0
