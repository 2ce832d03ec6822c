"""--user USER[:GROUP]: workers drop to another identity after fork; the master keeps its own.

Names are looked up once, in the master (NSS can be slow or need files a
dropped worker cannot read); a worker only makes the three system calls, in
the only safe order: supplementary groups, then gid, then uid.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass

from unicornish.errors import StartupError


@dataclass(frozen=True)
class Identity:
    spec: str
    uid: int
    gid: int
    groups: tuple[int, ...]

    def is_current(self) -> bool:
        return (
            os.geteuid() == self.uid
            and os.getuid() == self.uid
            and os.getegid() == self.gid
            and os.getgid() == self.gid
            and set(os.getgroups()) <= set(self.groups) | {self.gid}
        )

    def describe(self) -> str:
        return f"{self.spec} (uid={self.uid} gid={self.gid})"


def resolve(spec: str) -> Identity:
    """USER or USER:GROUP, names or numeric ids. Raises StartupError."""
    user, _sep, group = spec.partition(":")
    try:
        entry: pwd.struct_passwd | None = pwd.getpwnam(user)
    except KeyError:
        entry = None
    if entry is None and user.isdigit():
        try:
            entry = pwd.getpwuid(int(user))
        except KeyError:
            entry = None
    if entry is None:
        if not user.isdigit():
            raise StartupError(f"--user {spec}: no such user {user!r}")
        uid, gid, name = int(user), None, None
    else:
        uid, gid, name = entry.pw_uid, entry.pw_gid, entry.pw_name
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            if not group.isdigit():
                raise StartupError(f"--user {spec}: no such group {group!r}") from None
            gid = int(group)
    if gid is None:
        raise StartupError(f"--user {spec}: uid {uid} has no passwd entry; give USER:GROUP")
    groups: list[int] = [gid]
    if name is not None:
        try:
            groups = os.getgrouplist(name, gid)
        except OSError:
            groups = [gid]
    return Identity(spec, uid, gid, tuple(sorted(set(groups))))


def drop(identity: Identity) -> None:
    """Become `identity` for good (real, effective and saved ids). Raises OSError."""
    if identity.is_current():
        return
    os.setgroups(list(identity.groups))
    os.setgid(identity.gid)
    os.setuid(identity.uid)


def drop_error(identity: Identity, exc: OSError) -> str:
    why = exc.strerror or str(exc)
    if os.geteuid() != 0:
        why += f"; the master runs as uid {os.geteuid()}, and only root may switch users"
    return f"--user {identity.describe()}: cannot switch user: {why}"


def chown_for_workers(path: str | None, identity: Identity | None) -> str | None:
    """Let workers that dropped to `identity` reopen the log file (USR1) themselves."""
    if not path or identity is None or os.geteuid() != 0:
        return None
    try:
        os.chown(path, identity.uid, identity.gid)
    except OSError as exc:
        return f"cannot chown log file {path} to {identity.describe()}: {exc.strerror or exc}"
    return None
