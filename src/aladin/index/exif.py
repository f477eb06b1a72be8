"""The facts of a photo a search can filter on (`aladin.index.filters`), read from its header when it is indexed:
date taken, camera make and model, whether it has a GPS position, EXIF orientation and its size as shown.

Only the header is read (Pillow's `open` and `getexif` decode no pixels), so indexing pays little for it. A fact
the file does not record is None (NULL in the metadata); a file that cannot be opened has no facts at all.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from PIL import Image, UnidentifiedImageError

#: EXIF tags read (IFD0 unless noted).
_MAKE, _MODEL, _ORIENTATION = 0x010F, 0x0110, 0x0112
_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
_DATE_TAKEN, _DATE_DIGITIZED = 0x9003, 0x9004  # in the Exif IFD
_GPS_LATITUDE, _GPS_LONGITUDE = 2, 4  # in the GPS IFD
#: Orientations that turn the photo a quarter: shown width and height are the stored ones swapped.
_QUARTER_TURNS = {5, 6, 7, 8}
_EXIF_DATE = re.compile(r"^\s*(\d{4}):(\d{2}):(\d{2})[ T](\d{2}):(\d{2}):(\d{2})")


@dataclass(frozen=True)
class PhotoFacts:
    """What `read_facts` found; `taken` is ISO 8601 local time ("2021-07-04T15:30:00"), as the camera wrote it."""

    taken: str | None = None
    make: str | None = None
    model: str | None = None
    gps: bool | None = None
    orientation: int | None = None
    width: int | None = None
    height: int | None = None


#: The facts of a file that cannot be read (or an item with no file, e.g. one from a feature cache).
NO_FACTS = PhotoFacts()


def read_facts(path: str | Path) -> PhotoFacts:
    """The facts in the header of the image file at `path`; `NO_FACTS` when it cannot be opened."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. Pillow's "corrupt EXIF data": the facts are then missing
            with Image.open(path) as image:
                exif = image.getexif()
                size = image.size
                return _facts(exif, size)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError):
        return NO_FACTS


def _facts(exif: Image.Exif, size: tuple[int, int]) -> PhotoFacts:
    try:
        details = exif.get_ifd(_EXIF_IFD)
        gps = exif.get_ifd(_GPS_IFD)
    except (KeyError, ValueError, TypeError, OSError):  # a malformed sub-IFD: what IFD0 says still counts
        details, gps = {}, {}
    orientation = _integer(exif.get(_ORIENTATION))
    orientation = orientation if orientation in range(1, 9) else None
    width, height = size
    if orientation in _QUARTER_TURNS:
        width, height = height, width
    return PhotoFacts(
        taken=_date(details.get(_DATE_TAKEN)) or _date(details.get(_DATE_DIGITIZED)),
        make=_text(exif.get(_MAKE)),
        model=_text(exif.get(_MODEL)),
        gps=_GPS_LATITUDE in gps and _GPS_LONGITUDE in gps,
        orientation=orientation,
        width=int(width),
        height=int(height),
    )


def _text(value: object) -> str | None:
    """An EXIF string without the NULs and padding cameras leave in it; None when empty or not text."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    value = value.replace("\x00", "").strip()
    return value or None


def _integer(value: object) -> int | None:
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None


def _date(value: object) -> str | None:
    """EXIF "YYYY:MM:DD HH:MM:SS" → ISO 8601; None for a blank or impossible date ("0000:00:00 00:00:00")."""
    match = _EXIF_DATE.match(_text(value) or "")
    if not match:
        return None
    try:
        return datetime(*(int(part) for part in match.groups())).isoformat()  # type: ignore[misc]
    except ValueError:
        return None


def camera_name(make: str | None, model: str | None) -> str | None:
    """Make and model as one name ("Google Pixel 7"), the make once when the model already starts with it
    ("Canon EOS 5D", not "Canon Canon EOS 5D")."""
    if not model:
        return make
    if not make or model.lower().startswith(make.lower()):
        return model
    return f"{make} {model}"
