import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmctl.core.errors import CapacityError, InvalidInput, NotFound
from vmctl.core.placement import NodeLoad, Request, Resources, free, place, room_after, total

pytestmark = pytest.mark.unit

SMALL = Resources(1, 1024, 10)
NOTHING = Resources(0, 0, 0)


def node(
    name: str,
    cpu: int = 4,
    ram_mb: int = 8192,
    disk_gb: int = 100,
    used: Resources = NOTHING,
    ratios: tuple[float, float, float] = (1.0, 1.0, 1.0),
    groups: frozenset[str] = frozenset(),
    enabled: bool = True,
) -> NodeLoad:
    return NodeLoad(
        name, Resources(cpu, ram_mb, disk_gb), *ratios, used=used, groups=groups, enabled=enabled
    )


def want(need: Resources = SMALL, **kwargs: object) -> Request:
    return Request("vm1", need, **kwargs)  # type: ignore[arg-type]


# free / total


def test_free_is_capacity_minus_used() -> None:
    assert free(node("a", used=Resources(1, 1000, 30))) == Resources(3, 7192, 70)


def test_free_applies_overcommit_ratios_rounding_down() -> None:
    n = node("a", cpu=3, ram_mb=1000, disk_gb=10, ratios=(1.5, 1.25, 2.0))
    assert total(n) == Resources(4, 1250, 20)  # 4.5 vCPU rounds down to 4
    assert free(n) == Resources(4, 1250, 20)


def test_free_is_never_negative() -> None:
    assert free(node("a", used=Resources(9, 9000, 900))) == Resources(0, 0, 0)


def test_room_after_is_the_smallest_free_fraction() -> None:
    n = node("a", cpu=4, ram_mb=8192, disk_gb=100)
    assert room_after(n, Resources(1, 4096, 10)) == 0.5


# spread and pack


def test_spread_picks_the_emptiest_node() -> None:
    nodes = [node("a", used=Resources(2, 4096, 10)), node("b"), node("c", used=SMALL)]
    assert place(want(), nodes) == "b"


def test_pack_picks_the_fullest_node_that_fits() -> None:
    nodes = [node("a", used=Resources(2, 4096, 10)), node("b"), node("c", used=SMALL)]
    assert place(want(policy="pack"), nodes) == "a"


def test_pack_skips_a_fuller_node_without_room() -> None:
    nodes = [node("a", used=Resources(4, 0, 0)), node("b", used=Resources(1, 0, 0)), node("c")]
    assert place(want(policy="pack"), nodes) == "b"


def test_spread_compares_the_scarcest_resource() -> None:
    # a has lots of CPU but little RAM left; b is evenly half used
    a = node("a", used=Resources(0, 7168, 0))
    b = node("b", used=Resources(2, 4096, 50))
    assert place(want(), [a, b]) == "b"
    assert place(want(policy="pack"), [a, b]) == "a"


def test_spread_compares_fractions_not_absolute_amounts() -> None:
    big = node("big", cpu=64, ram_mb=262144, disk_gb=4000, used=Resources(60, 245760, 3800))
    small = node("small")
    assert place(want(), [big, small]) == "small"


def test_overcommit_ratio_makes_room() -> None:
    full = Resources(4, 0, 0)
    assert place(want(), [node("a", used=full, ratios=(2.0, 1.0, 1.0))]) == "a"
    with pytest.raises(CapacityError):
        place(want(), [node("a", used=full)])


def test_ties_are_broken_by_name_for_both_policies() -> None:
    nodes = [node("c"), node("a"), node("b")]
    assert place(want(), nodes) == "a"
    assert place(want(policy="pack"), nodes) == "a"
    assert place(want(), list(reversed(nodes))) == "a"


def test_exact_fit_is_accepted() -> None:
    assert place(want(Resources(4, 8192, 100)), [node("a")]) == "a"


@pytest.mark.parametrize(
    "need", [Resources(5, 8192, 100), Resources(4, 8193, 100), Resources(4, 8192, 101)]
)
def test_one_unit_too_many_is_refused(need: Resources) -> None:
    with pytest.raises(CapacityError, match="no node has room"):
        place(want(need), [node("a")])


def test_zero_sized_request_fits_a_full_node() -> None:
    assert place(want(Resources(0, 0, 0)), [node("a", used=Resources(4, 8192, 100))]) == "a"


# pinning


def test_pin_to_a_node_with_room() -> None:
    assert place(want(node="b"), [node("a"), node("b", used=Resources(3, 0, 0))]) == "b"


def test_pin_ignores_the_policy_ranking() -> None:
    assert place(want(node="a", policy="spread"), [node("a", used=SMALL), node("b")]) == "a"


def test_pin_to_a_node_without_room_says_what_is_short() -> None:
    nodes = [node("node1", used=Resources(0, 6656, 0)), node("node2")]
    with pytest.raises(CapacityError) as caught:
        place(want(Resources(1, 2048, 10), node="node1"), nodes)
    assert str(caught.value) == "node node1 has 1536 MiB RAM free, 2048 MiB asked"


def test_pin_lists_every_shortage() -> None:
    with pytest.raises(CapacityError) as caught:
        place(want(Resources(8, 1024, 200), node="a"), [node("a")])
    assert str(caught.value) == "node a has 4 vCPU free, 8 asked; 100 GiB disk free, 200 GiB asked"


def test_pin_to_an_unknown_node() -> None:
    with pytest.raises(NotFound) as caught:
        place(want(node="nope"), [node("b"), node("a")])
    assert str(caught.value) == "unknown node 'nope' (known: a, b)"


def test_pin_to_a_disabled_node() -> None:
    with pytest.raises(CapacityError, match="node a is disabled"):
        place(want(node="a"), [node("a", enabled=False), node("b")])


def test_pin_to_a_node_holding_the_group() -> None:
    with pytest.raises(CapacityError, match="node a already has a VM of group web"):
        place(want(node="a", group="web"), [node("a", groups=frozenset({"web"}))])


# anti-affinity and disabled nodes


def test_anti_affinity_avoids_nodes_holding_the_group() -> None:
    nodes = [node("a", groups=frozenset({"web"})), node("b", used=Resources(3, 7000, 90))]
    assert place(want(group="web"), nodes) == "b"
    assert place(want(group="db"), nodes) == "a"
    assert place(want(), nodes) == "a"


def test_every_node_with_room_holds_the_group() -> None:
    nodes = [
        node("a", groups=frozenset({"web", "db"})),
        node("b", groups=frozenset({"web"})),
        node("c", used=Resources(4, 0, 0)),
    ]
    with pytest.raises(CapacityError) as caught:
        place(want(group="web"), nodes)
    message = str(caught.value)
    assert message.startswith("group web already has a VM on every node with room for ")
    assert "(a, b)" in message


def test_disabled_node_is_never_chosen() -> None:
    nodes = [node("a", enabled=False), node("b", used=Resources(3, 7000, 90))]
    assert place(want(), nodes) == "b"
    assert place(want(policy="pack"), [node("a", used=SMALL, enabled=False), node("b")]) == "b"


def test_only_disabled_nodes() -> None:
    with pytest.raises(CapacityError, match=r"no enabled node to place vm1 on \(1 disabled\)"):
        place(want(), [node("a", enabled=False)])


def test_no_nodes_at_all() -> None:
    with pytest.raises(CapacityError, match="no enabled node"):
        place(want(), [])


# nothing fits


def test_capacity_error_names_the_largest_free_slot() -> None:
    nodes = [
        node("node1", used=Resources(3, 7168, 90)),
        node("node2", used=Resources(2, 5120, 70)),
        node("node3", enabled=False),
    ]
    with pytest.raises(CapacityError) as caught:
        place(want(Resources(4, 8192, 50)), nodes)
    assert str(caught.value) == (
        "no node has room for 4 vCPU, 8192 MiB RAM, 50 GiB disk; "
        "the largest free slot is node2: 2 vCPU, 3072 MiB RAM, 30 GiB disk"
    )


def test_capacity_error_is_not_masked_by_anti_affinity() -> None:
    nodes = [node("a", groups=frozenset({"web"})), node("b")]
    with pytest.raises(CapacityError, match="no node has room"):
        place(want(Resources(8, 1024, 10), group="web"), nodes)


# bad requests


def test_unknown_policy_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="policy"):
        place(want(policy="random"), [node("a")])


def test_negative_need_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="ram_mb"):
        place(want(Resources(1, -1, 1)), [node("a")])


# properties

resources = st.builds(Resources, st.integers(0, 16), st.integers(0, 16384), st.integers(0, 200))
loads = st.builds(
    NodeLoad,
    name=st.sampled_from(["n1", "n2", "n3", "n4", "n5"]),
    capacity=st.builds(Resources, st.integers(1, 16), st.integers(1, 16384), st.integers(1, 200)),
    overcommit_cpu=st.floats(0.5, 4.0),
    overcommit_ram=st.floats(0.5, 2.0),
    overcommit_disk=st.floats(0.5, 2.0),
    used=resources,
    groups=st.frozensets(st.sampled_from(["web", "db"])),
    enabled=st.booleans(),
)


@given(
    need=resources,
    nodes=st.lists(loads, max_size=5, unique_by=lambda n: n.name),
    group=st.none() | st.sampled_from(["web", "db"]),
    policy=st.sampled_from(["spread", "pack"]),
)
def test_placement_respects_room_group_and_enabled(
    need: Resources, nodes: list[NodeLoad], group: str | None, policy: str
) -> None:
    request = want(need, group=group, policy=policy)
    try:
        chosen = place(request, nodes)
    except CapacityError:
        assert not any(n.enabled and need.fits_in(free(n)) and group not in n.groups for n in nodes)
        return
    target = next(n for n in nodes if n.name == chosen)
    assert target.enabled
    assert need.fits_in(free(target))
    assert group is None or group not in target.groups
    allowed = [n for n in nodes if n.enabled and need.fits_in(free(n)) and group not in n.groups]
    rooms = [room_after(n, need) for n in allowed]
    best = max(rooms) if policy == "spread" else min(rooms)
    assert room_after(target, need) == best


# many at once (placement_batch): exactly what `place` gives one after another


def sequential(requests: list[Request], nodes: list[NodeLoad]) -> list[tuple[str, str]]:
    """The reference: `place` for each request in turn, booking what it placed."""
    from dataclasses import replace

    loads = {n.name: n for n in nodes}
    out = []
    for r in requests:
        try:
            name = place(r, list(loads.values()))
        except (CapacityError, InvalidInput, NotFound) as exc:
            out.append((r.name, f"{type(exc).__name__}: {exc}"))
            continue
        n = loads[name]
        used = Resources(
            n.used.cpu + r.need.cpu, n.used.ram_mb + r.need.ram_mb, n.used.disk_gb + r.need.disk_gb
        )
        groups = n.groups | {r.group} if r.group else n.groups
        loads[name] = replace(n, used=used, groups=groups)
        out.append((r.name, name))
    return out


def batched(requests: list[Request], nodes: list[NodeLoad]) -> list[tuple[str, str]]:
    from vmctl.core.placement_batch import place_many

    return [
        (p.name, p.node if p.node else f"{type(p.error).__name__}: {p.error}")
        for p in place_many(requests, nodes)
    ]


NAMES = ["n1", "n2", "n3", "n4", "n5", "n6", "n7", "n8", "n9", "n10", "n11", "n12"]
nodes_st = st.integers(1, 12).flatmap(
    lambda count: st.tuples(
        *[
            st.builds(
                NodeLoad,
                name=st.just(NAMES[i]),
                capacity=st.builds(
                    Resources, st.integers(0, 16), st.integers(0, 8192), st.integers(0, 200)
                ),
                overcommit_cpu=st.sampled_from([1.0, 1.5, 4.0]),
                overcommit_ram=st.sampled_from([1.0, 1.25, 2.0]),
                overcommit_disk=st.sampled_from([1.0, 3.0]),
                used=st.builds(
                    Resources, st.integers(0, 8), st.integers(0, 4096), st.integers(0, 100)
                ),
                groups=st.frozensets(st.sampled_from(["g1", "g2"]), max_size=2),
                enabled=st.booleans() | st.just(True),
                disk_in=st.sampled_from([None, "pool vms"]),
            )
            for i in range(count)
        ]
    )
)
sizes = st.sampled_from(
    [Resources(1, 512, 10), Resources(2, 2048, 20), Resources(4, 4096, 40), Resources(0, 0, 0)]
) | st.builds(Resources, st.integers(-1, 6), st.integers(-1, 5000), st.integers(-1, 120))
requests_st = st.lists(
    st.builds(
        Request,
        name=st.sampled_from(["a", "b", "c"]),
        need=sizes,
        node=st.none() | st.none() | st.sampled_from(["n1", "n2", "n13"]),
        group=st.none() | st.sampled_from(["g1", "g2", "g3"]),
        policy=st.sampled_from(["spread", "spread", "pack", "random"]),
    ),
    max_size=30,
)


@given(nodes=nodes_st, requests=requests_st)
@settings(max_examples=400, deadline=None)
def test_many_at_once_is_one_after_another(
    nodes: tuple[NodeLoad, ...], requests: list[Request]
) -> None:
    assert batched(requests, list(nodes)) == sequential(requests, list(nodes))


def test_equal_vms_spread_round_robin_by_name_and_pack_fills_one_node_first() -> None:
    nodes = [node("c"), node("a"), node("b")]
    reqs = [Request(f"vm{i}", SMALL) for i in range(6)]
    assert [n for _, n in batched(reqs, nodes)] == ["a", "b", "c", "a", "b", "c"]
    packed = [Request(f"vm{i}", SMALL, policy="pack") for i in range(5)]
    assert [n for _, n in batched(packed, nodes)] == ["a", "a", "a", "a", "b"]


def test_a_failure_in_the_middle_books_nothing_and_the_rest_go_on() -> None:
    nodes = [node("a", cpu=2), node("b", cpu=1)]
    reqs = [Request("big", Resources(3, 0, 0)), *(Request(f"vm{i}", SMALL) for i in range(3))]
    reqs.append(Request("late", SMALL))
    result = batched(reqs, nodes)
    assert result[0][1].startswith("CapacityError: no node has room for 3 vCPU")
    assert [n for _, n in result[1:4]] == ["a", "a", "b"]  # room is a fraction of each node
    assert result[4][1].startswith("CapacityError")  # all three vCPUs are booked now
    assert result == sequential(reqs, nodes)


def test_anti_affinity_in_a_batch_puts_one_per_node() -> None:
    nodes = [node("a"), node("b")]
    reqs = [Request(f"vm{i}", SMALL, group="web") for i in range(3)]
    result = batched(reqs, nodes)
    assert [n for _, n in result[:2]] == ["a", "b"]
    assert "anti-affinity keeps vm2 off them" in result[2][1]
