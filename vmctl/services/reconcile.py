"""`vmctl reconcile`: survey every node (one read-only command each), compare with PostgreSQL
and Redis (``vmctl.core.reconcile.compare``), and, with ``fix``, repair what is safe.

A repair holds the VM's lock (taken with timeout 0: what another operation holds is skipped, and
reported again next time) and first looks again at the one thing it is about to change, since
the survey may be seconds old. Nothing without this installation's mark is ever touched. A node
that does not answer is reported as such; its VMs are not judged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vmctl.core import drift as dr
from vmctl.core import reconcile as rc
from vmctl.core.errors import Busy, NotFound, VmctlError
from vmctl.core.records import RECORDED_STATES, VmRecord, default_actor
from vmctl.core.survey import NodeSurvey
from vmctl.services.ports import Cache, Connect, Store

if TYPE_CHECKING:
    from vmctl.core.inventory import Inventory, Node
    from vmctl.services.vms import VmService


@dataclass(frozen=True)
class Action:
    """What ``--fix`` did about one drift item: ``fixed``, ``skipped`` (busy, or no longer
    so when looked at again) or ``failed``."""

    drift: dr.Drift
    result: str
    detail: str

    def as_dict(self) -> dict[str, Any]:
        d = self.drift
        return {
            "kind": d.kind,
            "node": d.node,
            "vm": d.vm,
            "subject": d.subject,
            "result": self.result,
            "detail": self.detail,
        }


@dataclass
class Outcome:
    """One reconcile: the drift found (after ``--fix``: what is left), what is not vmctl's
    (``foreign``, information), the nodes that could not be surveyed, and what was done."""

    drift: list[dr.Drift]
    foreign: list[dr.Drift] = field(default_factory=list)
    unreachable: dict[str, str] = field(default_factory=dict)
    actions: list[Action] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.drift and not self.unreachable

    def as_dict(self) -> dict[str, Any]:
        return {
            "clean": self.clean,
            "drift": [d.as_dict() for d in self.drift],
            "done": [a.as_dict() for a in self.actions],
            "unreachable": [
                {"node": node, "error": error} for node, error in sorted(self.unreachable.items())
            ],
            "foreign": [d.as_dict() for d in self.foreign],
        }


class _Gone(Exception):
    """Looked at again, the drift is not there any more."""


class Reconciler:
    def __init__(
        self,
        inventory: Inventory,
        store: Store,
        cache: Cache,
        connect: Connect,
        progress: Callable[[str], None] = lambda _m: None,
        actor: str | None = None,
        end_move: Callable[[str], VmRecord | None] | None = None,
    ) -> None:
        self.end_move = end_move  # ends a move that died (vmctl.services.move.recover_locked)
        self.inventory = inventory
        self.store = store
        self.cache = cache
        self.connect = connect
        self.progress = progress
        self.actor = actor or default_actor()

    @classmethod
    def of(cls, svc: VmService) -> Reconciler:
        from vmctl.services import move

        return cls(
            svc.inventory,
            svc.store,
            svc.cache,
            svc.connect,
            svc.progress,
            svc.actor,
            end_move=lambda name: move.recover_locked(svc, name),
        )

    # -- looking -----------------------------------------------------------------------------

    def report(self, node: str | None = None) -> Outcome:
        """Survey ``node`` (default: every node) and compare; changes nothing."""
        nodes = [self.inventory.node(node)] if node else list(self.inventory.nodes)
        surveys, unreachable = self._survey(nodes)
        keys, cached = {}, self.cache.keys()
        for key in cached:
            name = rc.cache_name(key)
            if name is not None:
                keys[key] = self.cache.get_node(name)
        rows = self.store.list()  # after the surveys: what a create claimed meanwhile is here
        surveyed = {s.node for s in surveys}
        mine = [r for r in rows if r.node in surveyed]
        free = {
            r.name
            for r in mine
            if (r.state in ("creating", "deleting") or r.move_node is not None)
            and self._free(r.name)
        }
        names = self.store.snapshot_names()  # one query, not one per VM
        recorded = {
            r.name: names.get(r.name, []) for r in mine if r.state in ("running", "stopped")
        }
        found = rc.compare(
            rows,
            surveys,
            keys,
            self.store.installation_id(),
            free,
            pools={n.name: n.network.pool() for n in nodes},
            storage={n.name: n.storage.directory for n in nodes if n.name in surveyed},
            snapshots=recorded,
        )
        if node is not None:
            found = [d for d in found if d.node == node]
        return Outcome(
            drift=[d for d in found if not d.info],
            foreign=[d for d in found if d.info],
            unreachable=unreachable,
        )

    def _survey(self, nodes: Sequence[Node]) -> tuple[list[NodeSurvey], dict[str, str]]:
        def one(node: Node) -> NodeSurvey:
            hv = self.connect(node)
            shared = hv.storage.shared
            return hv.survey(node.network.name, images=lister.get(shared) == node.name)

        lister: dict[str | None, str] = {}  # shared storage -> the one node that lists it
        for node in nodes:
            try:
                lister.setdefault(self.connect(node).storage.shared, node.name)
            except VmctlError:
                continue  # one() says why
        surveys, unreachable = [], {}
        with ThreadPoolExecutor(max(1, len(nodes))) as pool:
            futures = {node.name: pool.submit(one, node) for node in nodes}
        for name, future in futures.items():
            try:
                surveys.append(future.result())
            except VmctlError as exc:
                unreachable[name] = str(exc)  # the caller says so (the CLI, watch-ip's log)
        return surveys, unreachable

    def _free(self, name: str) -> bool:
        """No process holds the VM's lock (a ``creating``/``deleting`` row so is stuck)."""
        try:
            with self.store.vm_lock(name, "reconcile-check", 0):
                return True
        except Busy:
            return False

    # -- repairing ---------------------------------------------------------------------------

    def fix(self, node: str | None = None) -> Outcome:
        """Report, repair what is safe, and survey again: the outcome holds what was done and
        what is left."""
        first = self.report(node)
        actions = self.apply(first.drift)
        after = self.report(node)
        after.actions = actions
        return after

    def apply(self, drift: Iterable[dr.Drift]) -> list[Action]:
        """Repair each fixable item, each under its VM's lock (taken with timeout 0)."""
        order = {kind: i for i, kind in enumerate(dr.KINDS)}
        actions = []
        for item in sorted(drift, key=lambda d: order.get(d.kind, len(order))):
            if item.fix is None:
                continue
            lock = item.vm or f"reservation-{item.data.get('ip', item.subject)}"
            try:
                with self.store.vm_lock(lock, "reconcile", 0):
                    done = self._repair(item)
            except Busy as exc:
                actions.append(Action(item, "skipped", str(exc)))
            except _Gone as exc:
                actions.append(Action(item, "skipped", f"no longer so: {exc}"))
            except VmctlError as exc:
                actions.append(Action(item, "failed", str(exc)))
                self._event(item, "failed", str(exc))
            else:
                actions.append(Action(item, "fixed", done))
                self._event(item, "ok", done)
            self.progress(f"{item.kind} {item.subject}: {actions[-1].result}: {actions[-1].detail}")
        return actions

    def _event(self, item: dr.Drift, result: str, detail: str) -> None:
        info = {"actor": self.actor, "kind": item.kind, "subject": item.subject, "did": detail}
        try:
            self.store.add_event(item.vm, item.node, "reconcile", result, info)
        except VmctlError as exc:
            self.progress(f"could not record the repair in the event log: {exc}")

    def _row(self, name: str) -> VmRecord | None:
        try:
            return self.store.get(name)
        except NotFound:
            return None

    def _end_move(self, name: str, node: Node) -> str:
        row = self._row(name)
        if row is None or row.move_node is None or row.node != node.name:
            raise _Gone(f"no move of {name} from {node.name} is under way")
        if self.end_move is None:
            raise _Gone("this reconciler cannot end moves")
        after = self.end_move(name)
        assert after is not None
        if after.node == row.move_node:
            return f"ended the move forward: {name} runs on {after.node}, recorded there"
        return f"undid the move to {row.move_node}: {name} is {after.state} on {after.node}"

    def _repair(self, item: dr.Drift) -> str:
        """Look again, then repair; what was done. _Gone when it is not so any more."""
        name = item.vm or ""
        if item.kind == dr.STALE_CACHE:
            row, now = self._row(name), self.cache.get_node(name)
            if now is None:
                raise _Gone("the key is gone")
            if row is not None and now == row.node:
                raise _Gone(f"it names {now}, where {name} is recorded")
            self.cache.forget(name)
            return f"forgot {item.subject}"
        node = self.inventory.node(item.node or "")
        hv = self.connect(node)
        storage = hv.storage.local_dir
        installation = self.store.installation_id()
        if item.kind in (dr.STUCK_CREATING, dr.STUCK_DELETING):
            from vmctl.services.delete import remove_from_node

            state = "creating" if item.kind == dr.STUCK_CREATING else "deleting"
            row = self._row(name)
            if row is None or row.state != state or row.node != node.name:
                raise _Gone(f"{name} is not recorded as {state} on {node.name}")
            remove_from_node(hv, node, row, installation)
            self.cache.forget(name)
            self.store.delete(name)
            verb = "rolled back the create" if state == "creating" else "finished the delete"
            return f"{verb}: removed {name} from {node.name}, forgot its cache key, deleted its row"
        if item.kind == dr.STUCK_MOVING:
            return self._end_move(name, node)
        if item.kind in (dr.DOMAIN_WITHOUT_ROW, dr.ORPHAN_DIR):
            row = self._row(name)
            if row is not None and row.node == node.name:
                raise _Gone(f"{name} is recorded on {node.name} now")
            domain = hv.state(name)
            if item.kind == dr.DOMAIN_WITHOUT_ROW and domain is None:
                raise _Gone(f"no domain {name} on {node.name}")
            if item.kind == dr.ORPHAN_DIR and domain is not None:
                raise _Gone(f"a domain {name} exists on {node.name}")
            # a row elsewhere (the VM moved): its disks in shared storage are that row's
            hv.delete(name, installation=installation, keep_disks=row is not None)
            what = f"domain {name} ({domain}) and " if domain else ""
            return f"removed {what}{storage}/{name} on {node.name}"
        if item.kind == dr.ORPHAN_STAGING:
            row = self._row(name)
            if row is not None and row.node == node.name and row.state == "creating":
                raise _Gone(f"{name} is being created on {node.name}")
            hv.remove_staging(item.data["entry"])
            return f"removed {item.subject} on {node.name}"
        if item.kind == dr.ORPHAN_IMAGE:
            if self._row(name) is not None:
                raise _Gone(f"{name} is recorded now")
            if hv.state(name) is not None:
                raise _Gone(f"a domain {name} exists on {node.name}")
            hv.delete(name, installation=installation)
            return f"removed the images of {name} from {hv.storage.describe()}"
        if item.kind == dr.ORPHAN_RESERVATION:
            mac, ip, network = item.data["mac"], item.data["ip"], item.data["network"]
            for r in self.store.list(node=node.name):
                if r.mac.lower() == mac or ip in (r.reserved_ip, r.ip):
                    raise _Gone(f"{r.name} has its MAC or address now")
            hv.unreserve(network, mac, ip)
            return f"deleted the reservation of {ip} for {mac} from {network} on {node.name}"
        if item.kind in (dr.ROW_WITHOUT_DOMAIN, dr.WRONG_STATE):
            row = self._row(name)
            if row is None or row.node != node.name or row.state not in ("running", "stopped"):
                raise _Gone(f"{name} is not recorded as running or stopped on {node.name}")
            domain = hv.state(name)
            if item.kind == dr.ROW_WITHOUT_DOMAIN:
                if domain is not None:
                    raise _Gone(f"domain {name} exists ({domain})")
                self.store.set_state(name, "error")
                return f"recorded {name} as error (was {row.state}; the row is kept)"
            want = RECORDED_STATES.get(domain or "")
            if want is None or want == row.state:
                raise _Gone(f"libvirt says {domain}, recorded {row.state}")
            self.store.set_state(name, want)
            return f"recorded {name} as {want} (was {row.state}; libvirt says {domain})"
        raise _Gone(f"{item.kind} is only reported")  # pragma: no cover - fix is None for them


def report(svc: VmService, node: str | None = None) -> Outcome:
    return Reconciler.of(svc).report(node)


def fix(svc: VmService, node: str | None = None) -> Outcome:
    return Reconciler.of(svc).fix(node)
