"""The broker-side access plan for Mosquitto's dynamic security plugin (pure functions, no I/O).

Every name and topic here follows :mod:`edge_agent.transport.topics`. One device = one dynsec
*client* (user name = device id, client id bound to ``edge-agent-<device id>``) holding:

* its own role ``<prefix>/device/<dev>``: publish anything under ``<prefix>/<dev>/`` (telemetry,
  events, inference, status and its last will, ``cmd-reply``) except its own ``cmd/`` topics; subscribe
  to its inbox, its receipts and its command topic ``<prefix>/<dev>/cmd/+``; publish its own group
  membership ``<prefix>/group/+/members/<dev>`` (retained; a group role cannot name the device);
* the shared role ``<prefix>/devices``: subscribe to the fleet-wide ``<prefix>/all/cmd/+``; publish
  direct messages and file chunks to any device's ``<prefix>/+/inbox``, receipts to a sender's
  ``<prefix>/+/receipts``, and command replies to operators' ``<prefix>/_ctl/+/reply/<its id>``;
  subscribe to any device's retained status ``<prefix>/+/status`` (presence);
* one dynsec *group* ``<prefix>/group/<g>`` per ``device.groups`` entry, whose role of the same name
  lets members subscribe to ``<prefix>/group/<g>/cmd/+``, ``<prefix>/group/<g>/msg`` and the group's
  membership ``<prefix>/group/<g>/members/+`` and publish to ``<prefix>/group/<g>/msg``.

Operators hold ``<prefix>/operators``: publish commands (device, group, fleet), subscribe to
everything under ``<prefix>/`` (``ctl watch``, ``tail``, retained status, their reply topics).

Names use ``/`` as the separator, which no id may contain (:mod:`edge_agent.ids`), so a device role
and a group role can never collide. :func:`allowed` evaluates a plan the way the plugin does (roles and
ACLs by priority, first match wins, default deny for publish and subscribe), so the plan can be
tested without a broker; ``tests/commands/test_dynsec_fleet.py`` checks that a real Mosquitto agrees.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from edge_agent.ids import check_device_id, check_id

PUBLISH = "publishClientSend"
SUB_LITERAL = "subscribeLiteral"
SUB_PATTERN = "subscribePattern"
ACL_TYPES = (PUBLISH, "publishClientReceive", SUB_LITERAL, SUB_PATTERN, "unsubscribeLiteral",
             "unsubscribePattern")

#: Priorities: a device role's deny of its own command topics must win over its ``<dev>/#`` allow.
DENY_PRIORITY = 10
DEVICE_ROLE_PRIORITY = 5  # the client's own role is evaluated before the shared ones
CLIENT_ID_PREFIX = "edge-agent-"


@dataclass(frozen=True)
class Acl:
    acltype: str
    topic: str
    allow: bool = True
    priority: int = 0

    def __post_init__(self) -> None:
        if self.acltype not in ACL_TYPES:
            raise ValueError(f"unknown dynsec ACL type {self.acltype!r} (one of {', '.join(ACL_TYPES)})")

    def args(self) -> list[str]:
        """``mosquitto_ctrl dynsec addRoleACL <role> ...`` arguments after the role name."""
        return [self.acltype, self.topic, "allow" if self.allow else "deny", str(self.priority)]


@dataclass(frozen=True)
class Role:
    name: str
    acls: tuple[Acl, ...]


@dataclass(frozen=True)
class DevicePlan:
    """What ``users add`` creates for one device."""

    username: str
    client_id: str
    own_role: Role
    shared_role: Role
    group_roles: tuple[Role, ...]

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(r.name.rsplit("/", 1)[1] for r in self.group_roles)

    def roles(self) -> tuple[Role, ...]:
        """Every role the client holds, in the order the plugin evaluates them."""
        return (self.own_role, self.shared_role, *self.group_roles)


# ------------------------------------------------------------------ names
def _prefix(prefix: str) -> str:
    return check_id(prefix, "topic prefix")


def device_role_name(prefix: str, dev: str) -> str:
    return f"{_prefix(prefix)}/device/{check_device_id(dev)}"


def group_name(prefix: str, group: str) -> str:
    """The dynsec group (and its role) for ``device.groups`` entry ``group``."""
    return f"{_prefix(prefix)}/group/{check_id(group, 'group')}"


def shared_role_name(prefix: str) -> str:
    return f"{_prefix(prefix)}/devices"


def operator_role_name(prefix: str) -> str:
    return f"{_prefix(prefix)}/operators"


def default_client_id(dev: str) -> str:
    """The agent's default ``mqtt.client_id`` (edge_agent/config/load.py)."""
    return CLIENT_ID_PREFIX + check_device_id(dev)


# ------------------------------------------------------------------ roles
def device_role(prefix: str, dev: str) -> Role:
    p, d = _prefix(prefix), check_device_id(dev)
    return Role(device_role_name(p, d), (
        Acl(PUBLISH, f"{p}/{d}/cmd/#", allow=False, priority=DENY_PRIORITY),
        Acl(PUBLISH, f"{p}/{d}/#"),
        Acl(SUB_LITERAL, f"{p}/{d}/inbox"),
        Acl(SUB_LITERAL, f"{p}/{d}/receipts"),
        Acl(SUB_PATTERN, f"{p}/{d}/cmd/+"),
        Acl(PUBLISH, f"{p}/_ctl/+/reply/{d}"),  # replies name their device: no answering for another
        Acl(PUBLISH, f"{p}/group/+/members/{d}"),  # its own membership only (messaging/groups.py)
    ))


def shared_role(prefix: str) -> Role:
    p = _prefix(prefix)
    return Role(shared_role_name(p), (
        Acl(SUB_PATTERN, f"{p}/all/cmd/+"),
        Acl(PUBLISH, f"{p}/+/inbox"),
        Acl(PUBLISH, f"{p}/+/receipts"),
        Acl(SUB_PATTERN, f"{p}/+/status"),  # peers' presence (messaging/presence.py)
    ))


def group_role(prefix: str, group: str) -> Role:
    p, g = _prefix(prefix), check_id(group, "group")
    return Role(group_name(p, g), (
        Acl(SUB_PATTERN, f"{p}/group/{g}/cmd/+"),
        Acl(SUB_LITERAL, f"{p}/group/{g}/msg"),
        Acl(PUBLISH, f"{p}/group/{g}/msg"),
        Acl(SUB_PATTERN, f"{p}/group/{g}/members/+"),
    ))


def operator_role(prefix: str) -> Role:
    p = _prefix(prefix)
    return Role(operator_role_name(p), (
        Acl(PUBLISH, f"{p}/+/cmd/+"),
        Acl(PUBLISH, f"{p}/group/+/cmd/+"),
        Acl(PUBLISH, f"{p}/all/cmd/+"),
        Acl(SUB_PATTERN, f"{p}/#"),
    ))


def plan_device(prefix: str, dev: str, groups: Iterable[str] = (), client_id: str | None = None) -> DevicePlan:
    """The client, roles and groups for device ``dev``; ids checked (ValueError names the bad one)."""
    d = check_device_id(dev)
    gs = tuple(dict.fromkeys(check_id(g, "group") for g in groups))
    cid = default_client_id(d) if client_id is None else client_id
    if cid and any(c in cid for c in "+#/"):
        raise ValueError(f"client id {cid!r}: '+', '#' and '/' are not allowed")
    return DevicePlan(username=d, client_id=cid, own_role=device_role(prefix, d), shared_role=shared_role(prefix),
                      group_roles=tuple(group_role(prefix, g) for g in gs))


# ------------------------------------------------------------------ evaluation (as the plugin does it)
def _sub_acl_matches(acl: str, sub: str) -> bool:
    """A subscription ``sub`` is covered by ACL filter ``acl`` (dynsec ``subscribePattern``): a ``+``
    in the ACL covers any one level (also a ``+`` in the subscription), a ``#`` the rest; a wildcard in
    the subscription is covered only by the same or a wider wildcard in the ACL."""
    a, s = acl.split("/"), sub.split("/")
    for i, level in enumerate(a):
        if level == "#":
            return True
        if i >= len(s):
            return False
        if level == "+":
            if s[i] == "#":
                return False
            continue
        if level != s[i]:
            return False
    return len(a) == len(s)


def _topic_matches(flt: str, topic: str) -> bool:
    """MQTT topic-filter matching for a concrete topic (publishClientSend)."""
    f, t = flt.split("/"), topic.split("/")
    for i, level in enumerate(f):
        if level == "#":
            return True
        if i >= len(t) or (level != "+" and level != t[i]):
            return False
    return len(f) == len(t)


def _decides(acl: Acl, action: str, topic: str) -> bool:
    if action == "publish":
        return acl.acltype == PUBLISH and _topic_matches(acl.topic, topic)
    if action == "subscribe":
        return ((acl.acltype == SUB_LITERAL and acl.topic == topic)
                or (acl.acltype == SUB_PATTERN and _sub_acl_matches(acl.topic, topic)))
    raise ValueError(f"action must be 'publish' or 'subscribe', got {action!r}")


def allowed(roles: Sequence[Role], action: str, topic: str) -> bool:
    """Would a client holding ``roles`` (in evaluation order) be allowed to ``publish`` to or
    ``subscribe`` to ``topic``? Within a role higher priorities first; the first matching ACL decides;
    nothing matching: denied (the plugin's default for publishClientSend and subscribe)."""
    for role in roles:
        for acl in sorted(role.acls, key=lambda a: -a.priority):
            if _decides(acl, action, topic):
                return acl.allow
    return False


# ------------------------------------------------------------------ the device's config
def mqtt_snippet(username: str, *, host: str, port: int, prefix: str, token: str | None = None,
                 token_file: str | None = None, client_id: str = "") -> list[str]:
    """The ``[mqtt]`` table of an account's config (TOML strings written as JSON strings)."""
    q = json.dumps
    lines = ["[mqtt]", f"host = {q(host)}", f"port = {int(port)}", f"topic_prefix = {q(prefix)}",
             f"username = {q(username)}"]
    if client_id:
        lines.append(f"client_id = {q(client_id)}")
    if token is not None:
        lines.append(f"password = {q(token)}")
    elif token_file is not None:
        lines.append(f"# password = the contents of {token_file} (mode 0600; copy it into mqtt.password,")
        lines.append("# keeping config.toml readable only by root and the agent's group)")
    return lines


def config_snippet(plan: DevicePlan, *, host: str, port: int, prefix: str, token: str | None = None,
                   token_file: str | None = None, public_key: str | None = None) -> str:
    """A ready ``config.toml`` fragment for the device: [device] id and groups, [mqtt] account."""
    q = json.dumps
    cid = plan.client_id if plan.client_id and plan.client_id != default_client_id(plan.username) else ""
    lines = ["[device]", f"id = {q(plan.username)}", f"groups = {q(list(plan.groups))}", "",
             *mqtt_snippet(plan.username, host=host, port=port, prefix=prefix, token=token, token_file=token_file,
                           client_id=cid)]
    if public_key:
        lines += ["", "# signed fleet roster entry for this device (device id -> Ed25519 public key, groups):",
                  f"# {q({'device': plan.username, 'public_key': public_key, 'groups': list(plan.groups)})}"]
    return "\n".join(lines) + "\n"
