"""Stream a tar archive member by member, refusing anything unsafe.

We never extract by member name: output paths are built from validated WNIDs
and base names.  Still, an archive that holds links, devices, absolute or
``..`` paths, or members larger than any image can be, is damaged or
malicious, and we stop at once with the member named rather than guess.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import IO

from bootstrap.common.errors import ArchiveError

SAFE_BASENAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,200}$")
READ_BUFFER = 8 << 20


def _kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return "symbolic link"
    if member.islnk():
        return "hard link"
    if member.ischr() or member.isblk():
        return "device file"
    if member.isfifo():
        return "FIFO"
    if member.isdir():
        return "directory"
    return f"member of type {member.type!r}"


def check_member(member: tarfile.TarInfo, archive: str, max_bytes: int) -> str:
    """The member's base name, after checking it is a plain, sanely named, sanely sized file."""
    if not member.isreg():
        raise ArchiveError(
            f"{archive}: member {member.name!r} is a {_kind(member)}; this archive should hold only regular "
            "files, so it is damaged or not the expected dataset. Nothing was extracted from it."
        )
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts or "\\" in member.name:
        raise ArchiveError(f"{archive}: member {member.name!r} has an unsafe path; refusing the archive")
    base = path.name
    if not SAFE_BASENAME.match(base):
        raise ArchiveError(f"{archive}: member {member.name!r} has an unexpected file name; refusing the archive")
    if member.size > max_bytes:
        raise ArchiveError(
            f"{archive}: member {member.name!r} declares {member.size:,} bytes, more than the "
            f"{max_bytes:,}-byte limit for this archive; it is damaged or malicious"
        )
    return base


def open_tar(fileobj: IO[bytes], archive: str, offset: int = 0) -> tarfile.TarFile:
    """A seekable tar reader starting at the member header at ``offset``."""
    fileobj.seek(offset)
    try:
        return tarfile.open(fileobj=fileobj, mode="r:")
    except tarfile.TarError as e:
        raise ArchiveError(f"{archive}: not a readable tar archive ({e}); fetch it again") from None


def iter_members(tar: tarfile.TarFile, archive: str, max_bytes: int) -> Iterator[tuple[tarfile.TarInfo, str]]:
    """Yield ``(member, basename)`` for every file, skipping directory entries.

    Uses ``next()`` rather than iteration so tarfile's member list, which would
    otherwise grow to every member of a 1.28M-image archive, can be dropped;
    checks the end-of-archive block at the end.
    """
    try:
        while (member := tar.next()) is not None:
            tar.members.clear()  # type: ignore[attr-defined]  # never looked up again; keeps memory flat
            if member.isdir():
                continue
            yield member, check_member(member, archive, max_bytes)
    except tarfile.TarError as e:
        raise ArchiveError(f"{archive}: the archive is truncated or corrupt ({e}); fetch it again") from None
    check_end(tar, archive)


def check_end(tar: tarfile.TarFile, archive: str) -> None:
    """Fail unless the archive ends with its zero end-of-archive block.

    ``tarfile`` takes a header cut short anywhere after the first member as a
    normal end of archive, so a truncated download would otherwise lose its
    tail without a word.
    """
    assert tar.fileobj is not None
    tar.fileobj.seek(tar.offset)
    block = tar.fileobj.read(tarfile.BLOCKSIZE)
    if len(block) < tarfile.BLOCKSIZE or block.count(0) != tarfile.BLOCKSIZE:
        raise ArchiveError(
            f"{archive}: the archive is truncated at byte {tar.offset:,} (no end-of-archive block); fetch it again"
        )


def read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, archive: str) -> bytes:
    reader = tar.extractfile(member)
    assert reader is not None  # regular files always have a reader
    data = reader.read()
    if len(data) != member.size:
        raise ArchiveError(
            f"{archive}: member {member.name!r} declares {member.size:,} bytes but the archive holds "
            f"{len(data):,}; the archive is truncated, fetch it again"
        )
    return data
