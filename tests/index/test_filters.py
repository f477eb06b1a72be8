"""Search filters: photo facts read from EXIF headers the test writes, the text and JSON forms, what each
comparison selects in the metadata, and one-line errors that name the column or JSON path."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from aladin.errors import AladinError
from aladin.index.exif import NO_FACTS, PhotoFacts, read_facts
from aladin.index.filters import filter_from_json, parse_filter
from aladin.index.metadata import IMAGES, ImageRecord, Metadata

_MAKE, _MODEL, _ORIENTATION, _EXIF_IFD, _GPS_IFD, _TAKEN = 0x010F, 0x0110, 0x0112, 0x8769, 0x8825, 0x9003


def write_photo(
    path: Path,
    size: tuple[int, int] = (40, 30),
    taken: str | None = None,
    make: str | None = None,
    model: str | None = None,
    gps: bool = False,
    orientation: int | None = None,
) -> Path:
    """A small photo with the EXIF a camera writes (JPEG), or none (any other extension)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    if make:
        exif[_MAKE] = make
    if model:
        exif[_MODEL] = model
    if orientation:
        exif[_ORIENTATION] = orientation
    if taken:
        exif.get_ifd(_EXIF_IFD)[_TAKEN] = taken
    if gps:
        position = exif.get_ifd(_GPS_IFD)
        position.update({1: "N", 2: (52.0, 31.0, 12.0), 3: "E", 4: (13.0, 24.0, 36.0)})
    image = Image.new("RGB", size, (200, 40, 40))
    if path.suffix == ".jpg":
        image.save(path, exif=exif)
    else:
        image.save(path)
    return path


@pytest.fixture
def library(tmp_path: Path) -> Metadata:
    """Four photos' metadata as an index writes it (facts read from the files while writing)."""
    root = tmp_path / "photos"
    photos = {
        "a": write_photo(
            root / "trip" / "a.jpg", (40, 30), "2021:07:04 15:30:00", "Google", "Pixel 7", True, 6
        ),
        "b": write_photo(root / "home" / "b.jpg", (64, 48), "2019:12:31 23:59:59", "Canon", "Canon EOS 5D"),
        "c": write_photo(root / "trip" / "c.png", (16, 16)),
        "d": write_photo(root / "new york" / "d.jpg", (20, 10), "2020:01:01 00:00:00", "Google", "Pixel 4a"),
    }
    meta = Metadata.empty()
    meta.image_root = root
    records = [(i, ImageRecord(str(path), name)) for i, (name, path) in enumerate(photos.items())]
    meta.write_version(tmp_path / "meta.sqlite", records, [], [], [])
    return Metadata.open(tmp_path / "meta.sqlite")


def names(meta: Metadata, where: str | dict | list) -> str:
    ids = meta.matching(IMAGES, filter_from_json(where)).tolist()
    return "".join(sorted(record.external_id for record in meta.images(ids).values()))


def test_facts_are_read_from_the_exif_header(tmp_path: Path) -> None:
    photo = write_photo(
        tmp_path / "p.jpg", (40, 30), "2021:07:04 15:30:00", "Google\x00", "Pixel 7 ", True, 6
    )
    assert read_facts(photo) == PhotoFacts("2021-07-04T15:30:00", "Google", "Pixel 7", True, 6, 30, 40)
    plain = write_photo(tmp_path / "p.png", (40, 30))
    assert read_facts(plain) == PhotoFacts(gps=False, width=40, height=30)  # read: no GPS, size as stored
    impossible = write_photo(tmp_path / "zero.jpg", taken="0000:00:00 00:00:00", orientation=9)
    assert read_facts(impossible).taken is None and read_facts(impossible).orientation is None
    (tmp_path / "bad.jpg").write_bytes(b"not a photo")
    assert read_facts(tmp_path / "bad.jpg") == NO_FACTS == read_facts(tmp_path / "gone.jpg")


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("taken>=2020-01-01", "ad"),
        ("taken<2020", "b"),
        ("taken<=2019-12-31", "b"),  # a day stands for the whole day
        ("taken=2020", "d"),
        ("taken>2020", "a"),  # after 2020: from 2021 on
        ("taken=2021-07", "a"),
        ("taken=2021-07-04T15:30", "a"),
        ("taken != 2020", "abc"),  # a photo without a date is not taken in 2020
        ("camera~pixel", "ad"),
        ('camera="Canon EOS 5D"', "b"),  # the make once, although the model repeats it
        ('camera=="google pixel 7"', "a"),
        ("make=google and not model~4a", "a"),
        ("not camera~canon", "acd"),  # a comparison on a missing fact is false, its negation true
        ("gps", "a"),
        ("not gps", "bcd"),
        ("gps=false", "bcd"),
        ("orientation=6", "a"),
        ("width=30 and height=40", "a"),  # as shown: the EXIF rotation swaps them
        ("height>=40", "ab"),
        ("type=png", "c"),
        ("type=JPG", "abd"),
        ('folder="new york"', "d"),
        ("folder=trip", "ac"),
        ("path~/trip/", "ac"),
        ("id<2", "ab"),
        ("(folder=trip or folder=home) and taken>=2019", "ab"),
        ("folder=trip or folder=home and taken>=2020", "ac"),  # and binds tighter than or
        ("not (folder=trip or gps)", "bd"),
        ({"taken": {">=": "2020-01-01"}, "camera": {"~": "Pixel"}}, "ad"),
        ({"or": [{"folder": "home"}, {"gps": True}], "not": {"type": "png"}}, "ab"),
        ([{"width": {">": 15}}, "type=jpg", {"height": {"<": 40, ">=": 10}}], "d"),
        ({"id": 3}, "d"),
    ],
)
def test_each_comparison_selects_what_it_says(
    library: Metadata, where: str | dict | list, expected: str
) -> None:
    assert names(library, where) == expected


def test_a_filter_prints_as_text_that_parses_back_to_it() -> None:
    for text in (
        'taken>=2020-07 and (camera~"Pixel 7" or not gps) and folder!="and"',
        "not (width>=4000 or height>=4000) or type=png",
    ):
        parsed = parse_filter(text)
        assert parse_filter(str(parsed)) == parsed


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "column 1: expected a field, found the end"),
        ("taken>=", "column 8: expected a date like 2020-01-31 after >=, found the end"),
        ("taken>=2020-13-01", "column 8: expected a date like 2020-01-31 for taken, found '2020-13-01'"),
        ("colour=red", "column 1: expected a field (taken, camera,"),
        ("camera=pixel and", "column 17: expected a field"),
        ("width~300", "column 6: expected an operator for width (= != < <= > >=), found '~'"),
        ("width=wide", "column 7: expected a whole number for width, found 'wide'"),
        ("id>99999999999999999999", "column 4: expected a whole number for id, found '99999999999999999999'"),
        ("gps=maybe", "column 5: expected true or false for gps, found 'maybe'"),
        ("gps<1", "column 4: expected an operator for gps (= !=), found '<'"),
        ("camera pixel", "column 8: expected an operator after camera"),
        (
            "(gps or type=png",
            "column 17: expected and, or, or ')' to close the '(' at column 1, found the end",
        ),
        ("gps)", "column 4: expected and, or, or the end of the filter, found ')'"),
        ('camera="Pixel', 'column 8: expected a closing " for the quote opened here'),
        (
            "gps & type=png",
            "column 5: expected a field, value, operator, parenthesis, and, or, not, found '&'",
        ),
        ("taken>2020 camera~x", "column 12: expected and, or, or the end of the filter, found 'camera'"),
    ],
)
def test_bad_syntax_is_one_line_naming_the_column(text: str, message: str) -> None:
    with pytest.raises(AladinError) as caught:
        parse_filter(text)
    assert str(caught.value).startswith(f"filter {text!r}: {message}")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"taken": {">=": "soon"}},
            "where.taken['>=']: expected a date like 2020-01-31 for taken, got 'soon'",
        ),
        ({"colour": "red"}, "where.colour: expected a field (taken,"),
        ({"or": []}, "where.or: expected a non-empty list of filters"),
        (
            {"and": [{"gps": True}, {"width": {"~": 3}}]},
            "where.and[1].width['~']: expected an operator for width",
        ),
        ({"width": {"between": [1, 2]}}, "where.width['between']: expected an operator (= != < <= > >= ~)"),
        ({"not": {"gps": "sometimes"}}, "where.not.gps['=']: expected true or false for gps"),
        (5, "where: expected a filter (a string, a non-empty object or list), got 5"),
        ({"not": "gps and"}, "filter 'gps and': column 8: expected a field"),
    ],
)
def test_bad_json_is_one_line_naming_the_path(data: object, message: str) -> None:
    with pytest.raises(AladinError) as caught:
        filter_from_json(data)
    assert str(caught.value).startswith(message)


def test_dates_at_the_end_of_the_calendar_select_without_overflowing(library: Metadata) -> None:
    for text in ("taken=9999-12-31", "taken=9999-12-31T23:59", "taken=9999-12", "taken>9999"):
        assert names(library, text) == ""
    for text in ("taken<=9999-12-31", "taken<9999-12-31T23:59", "taken<=9999"):
        assert names(library, text) == "abd"


def test_nesting_is_bounded_with_one_line_and_what_is_allowed_runs(library: Metadata) -> None:
    deepest = "not " * 32 + "gps"  # an even count of nots: the photos with a position
    assert names(library, deepest) == "a"
    assert names(library, "(" * 32 + "gps" + ")" * 32) == "a"
    for text in ("not " * 43 + "gps", "(" * 400 + "gps" + ")" * 400):
        with pytest.raises(AladinError, match="at most 32 nested") as err:
            parse_filter(text)
        assert "\n" not in str(err.value)
    nested: object = "gps"
    for _ in range(200):
        nested = {"not": nested}
    with pytest.raises(AladinError, match="nested filters"):
        filter_from_json(nested)
