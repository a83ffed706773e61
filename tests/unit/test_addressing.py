"""Which address a new VM gets, and which address the watcher believes: pure functions."""

from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmctl.core.addressing import (
    SOURCES,
    Lease,
    Neighbor,
    Observation,
    address_from,
    parse_sources,
    pick_address,
)
from vmctl.core.inventory import AddressPool

pytestmark = pytest.mark.unit

MAC = "52:54:00:12:34:56"
OTHER = "52:54:00:ab:cd:ef"
T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def ip(last: int) -> IPv4Address:
    return IPv4Address(f"10.20.1.{last}")


def pool(first: int = 1, last: int = 6, exclude: tuple[int, ...] = (1,)) -> AddressPool:
    """10.20.1.first-10.20.1.last; by default .1-.6 with the gateway .1 left out."""
    return AddressPool("10.20.1.0/24", ip(first), ip(last), frozenset(ip(n) for n in exclude))


def ago(minutes: int) -> datetime:
    return T0 - timedelta(minutes=minutes)


# pick_address


def test_an_empty_pool_gives_its_lowest_address_but_not_the_gateway() -> None:
    assert pick_address(pool(), [], {}) == ip(2)


def test_taken_addresses_are_skipped() -> None:
    assert pick_address(pool(), [ip(2), ip(3)], {}) == ip(4)
    assert pick_address(pool(), [ip(3), ip(2), ip(5)], {}) == ip(4)


def test_excluded_addresses_are_skipped_anywhere_in_the_pool() -> None:
    assert pick_address(pool(exclude=(1, 2, 3)), [], {}) == ip(4)


def test_a_never_used_address_beats_a_lower_one_given_back() -> None:
    released = {ip(2): ago(600), ip(3): ago(5)}
    assert pick_address(pool(), [], released) == ip(4)


def test_when_all_were_used_before_the_one_given_back_longest_ago_wins() -> None:
    released = {ip(2): ago(1), ip(3): ago(30), ip(4): ago(90), ip(5): ago(10), ip(6): ago(2)}
    assert pick_address(pool(), [], released) == ip(4)


def test_a_taken_address_given_back_earlier_is_still_taken() -> None:
    released = {ip(n): ago(10 * n) for n in range(2, 7)}  # .6 given back longest ago ...
    assert pick_address(pool(), [ip(6)], released) == ip(5)  # ... but taken again since


def test_a_full_pool_gives_none() -> None:
    assert pick_address(pool(), [ip(n) for n in range(2, 7)], {}) is None
    assert pick_address(pool(), [ip(n) for n in range(2, 7)], {ip(3): ago(5)}) is None


def test_a_pool_of_one_address() -> None:
    one = pool(first=9, last=9, exclude=(1,))
    assert len(one) == 1
    assert pick_address(one, [], {}) == ip(9)
    assert pick_address(one, [], {ip(9): ago(1)}) == ip(9)
    assert pick_address(one, [ip(9)], {}) is None
    assert pick_address(pool(first=1, last=1, exclude=(1,)), [], {}) is None  # the gateway only


@given(
    first=st.integers(0, 2**32 - 64),
    size=st.integers(1, 40),
    data=st.data(),
)
def test_the_picked_address_is_free_and_in_the_pool(
    first: int, size: int, data: st.DataObject
) -> None:
    members = [IPv4Address(first + i) for i in range(size)]
    anywhere = st.sampled_from(members) | st.builds(IPv4Address, st.integers(0, 2**32 - 1))
    exclude = data.draw(st.frozensets(anywhere, max_size=5), label="exclude")
    taken = data.draw(st.lists(anywhere, max_size=size + 2), label="taken")
    released = data.draw(
        st.dictionaries(anywhere, st.datetimes(timezones=st.just(UTC)), max_size=size + 2),
        label="released",
    )
    the_pool = AddressPool("space", members[0], members[-1], exclude)

    picked = pick_address(the_pool, taken, released)

    free = [m for m in members if m not in exclude and m not in taken]
    if not free:
        assert picked is None
        return
    assert picked is not None
    assert the_pool.first <= picked <= the_pool.last
    assert picked not in exclude and picked not in taken
    never_used = [m for m in free if m not in released]
    if never_used:
        assert picked == min(never_used)
    else:
        assert released[picked] == min(released[m] for m in free)


# address_from: leases


def test_lease_of_the_mac() -> None:
    seen = Observation(
        leases=(
            Lease(OTHER, "10.20.1.7", "2026-11-25 14:00:00"),
            Lease(MAC, "10.20.1.5", "2026-11-25 13:00:00"),
        )
    )
    assert address_from(seen, MAC, "lease") == "10.20.1.5"
    assert address_from(seen, "52:54:00:00:00:99", "lease") is None


def test_several_leases_for_one_mac_the_one_expiring_last_wins() -> None:
    seen = Observation(
        leases=(
            Lease(MAC, "10.20.1.5", "2026-11-25 13:00:00"),
            Lease(MAC, "10.20.1.9", "2026-11-25 14:30:00"),
            Lease(MAC, "10.20.1.3", "2026-11-25 09:59:59"),
        )
    )
    assert address_from(seen, MAC, "lease") == "10.20.1.9"


def test_macs_are_compared_without_case() -> None:
    seen = Observation(
        leases=(Lease(MAC.upper(), "10.20.1.5", "2026-11-25 13:00:00"),),
        neighbors=(Neighbor(MAC.upper(), "10.20.1.6", "REACHABLE"),),
    )
    assert address_from(seen, MAC, "lease") == "10.20.1.5"
    assert address_from(seen, MAC.upper(), "lease") == "10.20.1.5"
    assert address_from(seen, MAC, "arp") == "10.20.1.6"


def test_nothing_seen_gives_none_for_every_batch_source() -> None:
    assert address_from(Observation(), MAC, "lease") is None
    assert address_from(Observation(), MAC, "arp") is None


# address_from: the ARP table


def test_reachable_beats_stale_whatever_the_order_and_address() -> None:
    stale = Neighbor(MAC, "10.20.1.3", "STALE")
    reachable = Neighbor(MAC, "10.20.1.200", "REACHABLE")
    for neighbors in ((stale, reachable), (reachable, stale)):
        assert address_from(Observation(neighbors=neighbors), MAC, "arp") == "10.20.1.200"


def test_permanent_beats_reachable_and_stale_still_counts_alone() -> None:
    seen = Observation(
        neighbors=(Neighbor(MAC, "10.20.1.8", "REACHABLE"), Neighbor(MAC, "10.20.1.9", "PERMANENT"))
    )
    assert address_from(seen, MAC, "arp") == "10.20.1.9"
    only_stale = Observation(neighbors=(Neighbor(MAC, "10.20.1.4", "STALE"),))
    assert address_from(only_stale, MAC, "arp") == "10.20.1.4"


def test_entries_of_equal_worth_give_the_lowest_address() -> None:
    seen = Observation(
        neighbors=(
            Neighbor(MAC, "10.20.1.30", "STALE"),
            Neighbor(MAC, "10.20.1.4", "STALE"),  # numerically lower, textually higher
            Neighbor(MAC, "10.20.1.100", "STALE"),
        )
    )
    assert address_from(seen, MAC, "arp") == "10.20.1.4"


@pytest.mark.parametrize("state", ["FAILED", "INCOMPLETE", "NONE", "failed"])
def test_failed_and_incomplete_entries_are_ignored(state: str) -> None:
    seen = Observation(neighbors=(Neighbor(MAC, "10.20.1.5", state),))
    assert address_from(seen, MAC, "arp") is None
    with_good = Observation(
        neighbors=(Neighbor(MAC, "10.20.1.2", state), Neighbor(MAC, "10.20.1.5", "STALE"))
    )
    assert address_from(with_good, MAC, "arp") == "10.20.1.5"


def test_arp_states_are_compared_without_case() -> None:
    seen = Observation(
        neighbors=(Neighbor(MAC, "10.20.1.3", "stale"), Neighbor(MAC, "10.20.1.9", "reachable"))
    )
    assert address_from(seen, MAC, "arp") == "10.20.1.9"


def test_the_arp_table_is_not_a_lease_and_back() -> None:
    seen = Observation(neighbors=(Neighbor(MAC, "10.20.1.5", "REACHABLE"),))
    assert address_from(seen, MAC, "lease") is None
    leased = Observation(leases=(Lease(MAC, "10.20.1.5", "2026-11-25 13:00:00"),))
    assert address_from(leased, MAC, "arp") is None


@pytest.mark.parametrize("source", ["agent", "dhcp", "", "LEASE"])
def test_a_source_that_is_not_a_batch_source_is_refused(source: str) -> None:
    with pytest.raises(ValueError, match="not a batch source"):
        address_from(Observation(), MAC, source)


# parse_sources


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("lease,arp", ("lease", "arp")),
        ("arp,lease", ("arp", "lease")),
        ("agent", ("agent",)),
        (" agent , lease ,arp ", ("agent", "lease", "arp")),
        ("lease,,arp,", ("lease", "arp")),
        (",".join(SOURCES), SOURCES),
    ],
)
def test_sources_keep_their_order(text: str, expected: tuple[str, ...]) -> None:
    assert parse_sources(text) == expected


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("lease,dhcp", "dhcp is not a source"),
        ("ping", "ping is not a source"),
        ("lease,foo,arp,bar", "foo, bar is not a source"),
        ("Lease", "Lease is not a source"),
    ],
)
def test_unknown_sources_are_named(text: str, named: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_sources(text)
    message = str(caught.value)
    assert named in message
    assert "lease, arp, agent" in message  # and what would do


@pytest.mark.parametrize("text", ["", " ", ",", " , ,"])
def test_no_source_at_all_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"^nothing is not a source"):
        parse_sources(text)


@pytest.mark.parametrize("text", ["lease,lease", "lease,arp,lease", "arp, arp"])
def test_a_source_named_twice_is_refused(text: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_sources(text)
    name = text.split(",")[0].strip()
    assert str(caught.value) == f"{name} is named twice in {text!r}"
