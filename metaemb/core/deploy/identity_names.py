"""What may name a gallery identity: one line of text, not `<new>` (identify's answer for
none of the enrolled), and for a rename a name a folder can carry, compared in one Unicode
form (a folder copied through macOS comes back in NFD)."""

from __future__ import annotations

import unicodedata

from metaemb.core.errors import GalleryError

NEW = "<new>"  # the decision "none of the enrolled identities"


def check_new_name(identity: str, renaming: bool = False) -> None:
    """GalleryError for a name no identity may have (`add` and `rename` share it); a rename's
    new name must also be one an identity folder can carry, as `enroll` then looks for it."""
    if not valid_name(identity):
        raise GalleryError(
            f"gallery identity names are non-empty text without tabs or line breaks, got "
            f"{identity!r}"
        )
    if identity == NEW:  # indistinguishable from the decision "none of the enrolled"
        fix = "choose another name" if renaming else "rename that identity's folder"
        raise GalleryError(
            f"'{NEW}' is the answer identify gives for a probe of none of the enrolled "
            f"identities, so it cannot name one; {fix}."
        )
    if renaming and (identity in (".", "..") or any(c in identity for c in "/\0")):
        raise GalleryError(
            f"{identity!r} cannot be a folder's name, and identities are enrolled from folders "
            "named as them ('enroll' would never find this one's files): choose a name "
            "without '/', other than '.' and '..'."
        )
    if renaming and identity != identity.strip():  # `--identities` trims names
        raise GalleryError(
            f"new name {identity!r} starts or ends with a blank; give it without "
            f"({identity.strip()!r})."
        )


def nfc(name: str) -> str:
    """`name` in Unicode normal form C: how two spellings that print alike compare."""
    return unicodedata.normalize("NFC", name)


def valid_name(identity: object) -> bool:
    """Whether `identity` can name a gallery identity: non-empty text with no tab, CR or LF
    (the gallery's name lists and `identify`'s console lines are one name per line)."""
    return (
        isinstance(identity, str)
        and bool(identity.strip())
        and not any(c in identity for c in "\t\n\r")
    )
