"""Field ownership as a Kubernetes API server keeps it, for the test API emulator: server-side apply and updates.

A simplified model of the real field sets: a field is a path of map keys, and a list is one atomic field (the
operator always applies whole lists; lists with merge keys, such as containers by name, are the one place a
real API server is finer). What it keeps of the real behaviour:
- an apply creates or merges, and its manager owns exactly the fields it applied;
- a field another manager owns with a different value is a conflict (409) unless the apply is forced, which
  moves the field to the applier; the same value is simply shared;
- a field the manager applied before and leaves out now is removed, unless another manager still owns it;
- a create or merge patch ("Update") gives its manager what it set and takes it from the others, no conflicts.
Ownership lives in `metadata.managedFields` in the API's own shape (FieldsV1, `f:` keys).
"""

from __future__ import annotations

import copy
from typing import Any

Path = tuple[str, ...]
Owners = dict[tuple[str, str], set[Path]]  # (manager, "Apply" | "Update") -> fields
_SERVER_META = {"name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp", "managedFields",
                "deletionTimestamp", "selfLink"}
_MISSING = object()


class Conflict(Exception):
    """An apply would change fields other managers own: [(manager, path)]."""

    def __init__(self, conflicts: list[tuple[str, Path]]) -> None:
        self.conflicts = conflicts
        listed = "; ".join(f'conflict with "{m}": .{".".join(p)}' for m, p in conflicts)
        super().__init__(f"Apply failed with {len(conflicts)} conflict{'s' if len(conflicts) > 1 else ''}: {listed}")


def fields(obj: Any, prefix: Path = ()) -> set[Path]:
    """The fields an object (or a merge patch's set values) names; None (a merge-patch deletion) names none."""
    out: set[Path] = set()
    if not isinstance(obj, dict):
        return out
    for key, value in obj.items():
        p = (*prefix, key)
        if _server_owned(p) or value is None:
            continue
        if isinstance(value, dict) and value:
            out |= fields(value, p)
        else:
            out.add(p)
    return out


def deleted(patch: Any, prefix: Path = ()) -> set[Path]:
    """The fields a merge patch deletes (its None values)."""
    out: set[Path] = set()
    if isinstance(patch, dict):
        for key, value in patch.items():
            p = (*prefix, key)
            out |= {p} if value is None else deleted(value, p)
    return out


def _server_owned(p: Path) -> bool:
    return p[0] in ("apiVersion", "kind", "status") or (p[0] == "metadata" and len(p) > 1 and p[1] in _SERVER_META)


def _overlap(a: Path, b: Path) -> bool:
    n = min(len(a), len(b))
    return a[:n] == b[:n]


def value(obj: Any, p: Path) -> Any:
    for key in p:
        if not isinstance(obj, dict) or key not in obj:
            return _MISSING
        obj = obj[key]
    return obj


def _remove(obj: dict[str, Any], p: Path, keep: set[Path]) -> None:
    """Delete field `p`, then any map it leaves empty that no kept field lies under."""
    parents = [obj]
    for key in p[:-1]:
        nxt = parents[-1].get(key)
        if not isinstance(nxt, dict):
            return
        parents.append(nxt)
    parents[-1].pop(p[-1], None)
    for depth in range(len(p) - 1, 0, -1):
        here = p[:depth]
        if parents[depth] or any(_overlap(k, here) and len(k) >= depth for k in keep):
            break
        parents[depth - 1].pop(p[depth - 1], None)


def _merge(live: Any, applied: Any) -> Any:
    if not isinstance(live, dict) or not isinstance(applied, dict):
        return copy.deepcopy(applied)
    out = dict(live)
    for key, v in applied.items():
        out[key] = _merge(live.get(key), v)
    return out


def owners(obj: dict[str, Any] | None) -> Owners:
    out: Owners = {}
    for entry in ((obj or {}).get("metadata") or {}).get("managedFields") or []:
        out[(entry["manager"], entry["operation"])] = _decode(entry.get("fieldsV1") or {})
    return out


def with_owners(obj: dict[str, Any], table: Owners) -> dict[str, Any]:
    """`obj` with `metadata.managedFields` set from `table` (managers that own nothing are dropped)."""
    obj.setdefault("metadata", {})["managedFields"] = [
        {"manager": m, "operation": op, "apiVersion": obj.get("apiVersion", ""), "fieldsType": "FieldsV1",
         "fieldsV1": _encode(paths)}
        for (m, op), paths in sorted(table.items()) if paths]
    return obj


def _encode(paths: set[Path]) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for p in sorted(paths):
        node = root
        for key in p:
            node = node.setdefault(f"f:{key}", {})
    return root


def _decode(tree: dict[str, Any], prefix: Path = ()) -> set[Path]:
    out: set[Path] = set()
    for key, sub in tree.items():
        p = (*prefix, key[2:])
        out |= _decode(sub, p) if sub else {p}
    return out


def apply(live: dict[str, Any] | None, applied: dict[str, Any], manager: str, force: bool) -> dict[str, Any]:
    """The object after `manager` applies `applied` to `live` (None: absent); raises Conflict."""
    current = copy.deepcopy(live) if live is not None else {}
    table = owners(current)
    wanted = fields(applied)
    conflicts: list[tuple[str, Path]] = []
    for (m, op), paths in table.items():
        if (m, op) == (manager, "Apply"):
            continue
        for theirs in sorted(paths):
            for ours in wanted:
                if not _overlap(theirs, ours):
                    continue
                at = theirs if len(theirs) <= len(ours) else ours  # compare where the two fields meet
                if value(current, at) != value(applied, at):
                    conflicts.append((m, ours))
    if conflicts and not force:
        raise Conflict(sorted(set(conflicts)))
    if force:  # the applier takes every field it sets
        for key, paths in table.items():
            if key != (manager, "Apply"):
                table[key] = {p for p in paths if not any(_overlap(p, w) for w in wanted)}
    dropped = table.get((manager, "Apply"), set()) - wanted
    table[(manager, "Apply")] = wanted
    out = _merge(current, applied)
    others = set().union(*(paths for key, paths in table.items() if key != (manager, "Apply")))
    kept = wanted | others
    for p in sorted(dropped, key=len, reverse=True):
        if not any(_overlap(p, k) for k in kept):
            _remove(out, p, kept)
    return with_owners(out, table)


def update(live: dict[str, Any] | None, patch: dict[str, Any], manager: str) -> Owners:
    """Ownership after a create (live None) or merge patch by `manager`: it gets what it set, others lose it."""
    table = owners(live)
    set_now, gone = fields(patch), deleted(patch)
    touched = set_now | gone
    for key, paths in table.items():
        table[key] = {p for p in paths if not any(_overlap(p, t) for t in touched)}
    table[(manager, "Update")] = table.get((manager, "Update"), set()) | set_now
    return table
