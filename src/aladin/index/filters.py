"""Search filters: which images a search may return, by their facts (`aladin.index.exif`), folder, file type and
path. A filter is evaluated against the index's SQLite metadata to a set of ids, and the kNN search runs inside
that set (`SearchIndex.search`), so a filter never returns fewer than k hits while k images match.

Text form (`aladin search --where`, the page's filter box):

    taken>=2020-01-01 and camera~Pixel
    (folder=beach or folder="new york") and not gps and width>=4000

- fields: taken (date taken), camera (make and model), make, model, gps (has a GPS position), orientation
  (EXIF 1-8), width and height (as shown, after the EXIF rotation), type (file extension, e.g. jpg), folder (name
  of the folder holding the file), path (the file's full path), id (the image id);
- operators: = (also ==), !=, <, <=, >, >=, and ~ (contains; text fields only). Text compares ignore case;
  numbers are whole numbers; gps takes true/false (`gps` alone means gps=true);
- dates: 2020, 2020-07, 2020-07-04 or 2020-07-04T15:30[:00] stand for that whole year, month, day, minute or
  second: taken=2020-07 is any time in July 2020, taken<=2020-07-04 includes that day, taken>2020 starts in 2021;
- and, or, not (and binds tighter than or), parentheses; quote values with spaces or operators ("Pixel 7").

A comparison on a fact the photo does not record is false, so `camera~Pixel` never matches a photo without
EXIF, and `camera!=Pixel` (the same as `not camera=Pixel`) does.

JSON form (the HTTP API's `where`, `Searcher.search_text(where=...)`): an object is the `and` of its entries,
each `field: value` (equals) or `field: {operator: value, ...}`; "and"/"or" take a list of filters, "not" one;
a list is the `and` of its items; a string is the text form:

    {"taken": {">=": "2020-01-01"}, "camera": {"~": "Pixel"}}
    {"or": [{"folder": "beach"}, {"gps": true}], "not": {"type": "png"}}

Bad syntax is one line naming the column (text) or the JSON path, and what was expected there.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NoReturn

from aladin.errors import AladinError

TEXT, NUMBER, DATE, BOOL = "text", "number", "date", "bool"
#: Field → its kind; each is a column of the metadata's `image_facts` view (`aladin.index.metadata`).
FIELDS = {
    "taken": DATE,
    "camera": TEXT,
    "make": TEXT,
    "model": TEXT,
    "gps": BOOL,
    "orientation": NUMBER,
    "width": NUMBER,
    "height": NUMBER,
    "type": TEXT,
    "folder": TEXT,
    "path": TEXT,
    "id": NUMBER,
}
OPERATORS = ("=", "!=", "<", "<=", ">", ">=", "~")
_OPS_OF = {TEXT: OPERATORS, NUMBER: OPERATORS[:-1], DATE: OPERATORS[:-1], BOOL: ("=", "!=")}
_TRUE, _FALSE = ("true", "yes", "1"), ("false", "no", "0")
_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2}))?)?)?)?$")
_WORD = r"[\w\-:./+]+"  # a value (or field) that needs no quotes
_EXAMPLE = {TEXT: "text", NUMBER: "a whole number", DATE: "a date like 2020-01-31", BOOL: "true or false"}


@dataclass(frozen=True)
class Compare:
    """`field op value`; `value` already checked and converted for the field's kind (for a date: the ISO times
    starting and ending the span it names, and the date as written)."""

    field: str
    op: str
    value: Any

    def __str__(self) -> str:
        shown = self.value[2] if FIELDS[self.field] == DATE else self.value
        if isinstance(shown, bool):
            shown = str(shown).lower()
        return f"{self.field}{self.op}{_quote(str(shown))}"


@dataclass(frozen=True)
class And:
    items: tuple[Filter, ...]

    def __str__(self) -> str:
        return " and ".join(f"({item})" if isinstance(item, Or) else str(item) for item in self.items)


@dataclass(frozen=True)
class Or:
    items: tuple[Filter, ...]

    def __str__(self) -> str:
        return " or ".join(str(item) for item in self.items)


@dataclass(frozen=True)
class Not:
    item: Filter

    def __str__(self) -> str:
        return f"not {self.item}" if isinstance(self.item, Compare) else f"not ({self.item})"


Filter = Compare | And | Or | Not


def _quote(value: str) -> str:
    """`value` as the text form writes it: bare when it reads back as one word, else quoted."""
    if value and re.fullmatch(_WORD, value) and value.lower() not in ("and", "or", "not"):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# ---- values --------------------------------------------------------------------------------------------


def _value(field: str, op: str, raw: Any) -> Any:
    """`raw` (text from the text form, or a JSON value) as `field` compares it; a ValueError says what it expected."""
    kind = FIELDS[field]
    if op not in _OPS_OF[kind]:
        raise ValueError(f"an operator for {field} ({' '.join(_OPS_OF[kind])})")
    if kind == BOOL:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in _TRUE + _FALSE:
            return raw.lower() in _TRUE
    elif kind == NUMBER:
        number = raw if isinstance(raw, int) and not isinstance(raw, bool) else None
        if isinstance(raw, str) and re.fullmatch(r"[+-]?\d+", raw):
            number = int(raw)
        if number is not None and abs(number) < 2**63:  # what SQLite holds
            return number
    elif kind == DATE:
        if isinstance(raw, str) and (span := _date_span(raw)):
            return span
    elif isinstance(raw, str):
        return raw
    raise ValueError(f"{_EXAMPLE[kind]} for {field}")


def _date_span(text: str) -> tuple[str, str, str] | None:
    """A date or time as the span it names: (start, end, text) with start and end as ISO times."""
    match = _DATE.match(text)
    if not match:
        return None
    parts = [int(p) if p else None for p in match.groups()]
    given = sum(p is not None for p in parts)
    year, month, day, hour, minute, second = (p or d for p, d in zip(parts, (0, 1, 1, 0, 0, 0), strict=True))
    try:
        start = datetime(year, month, day, hour, minute, second)
    except ValueError:
        return None
    try:
        if given == 1:
            end = start.replace(year=year + 1)
        elif given == 2:
            end = start.replace(year=year + month // 12, month=month % 12 + 1)
        else:
            end = start + {3: timedelta(days=1), 5: timedelta(minutes=1), 6: timedelta(seconds=1)}[given]
    except (OverflowError, ValueError):  # a span ending after 9999 runs to the last representable second
        end = datetime.max.replace(microsecond=0)
    return start.isoformat(), end.isoformat(), text


# ---- the text form -------------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""\s*(?:(?P<op>==|!=|<=|>=|=|<|>|~)|(?P<paren>[()])|(?P<quoted>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')"""
    r"""|(?P<word>""" + _WORD + r""")|(?P<bad>\S))"""
)


@dataclass(frozen=True)
class _Token:
    kind: str  # op, paren, quoted, word, end
    text: str
    column: int  # 1-based

    def shown(self) -> str:
        return "the end" if self.kind == "end" else repr(self.text)


def _tokens(text: str) -> list[_Token]:
    tokens = []
    for match in _TOKEN.finditer(text):
        kind = match.lastgroup
        if kind is None:  # only trailing blanks
            break
        value = match.group(kind)
        column = match.start(kind) + 1
        if kind == "bad":
            if value in "\"'":
                raise _error(text, column, f"a closing {value} for the quote opened here", "the end")
            raise _error(text, column, "a field, value, operator, parenthesis, and, or, not", repr(value))
        if kind == "quoted":
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        tokens.append(_Token(kind or "", value, column))
    tokens.append(_Token("end", "", len(text.rstrip()) + 1))
    return tokens


#: How deeply filters may nest: SQLite's parser, which runs them, has a bounded stack.
MAX_NESTING = 32


def _error(text: str, column: int, expected: str, found: str) -> AladinError:
    return AladinError(f"filter {text!r}: column {column}: expected {expected}, found {found}")


class _Parser:
    """Recursive descent: or → and ('or' and)*; and → unary ('and' unary)*; unary → 'not' unary | atom;
    atom → '(' or ')' | field op value | gps."""

    def __init__(self, text: str):
        self.text = text
        self.tokens = _tokens(text)
        self.at = 0
        self.depth = 0  # 'not's and '('s open around the current token

    def parse(self) -> Filter:
        result = self.either()
        if self.peek().kind != "end":
            self.fail("and, or, or the end of the filter")
        return result

    def peek(self) -> _Token:
        return self.tokens[self.at]

    def take(self) -> _Token:
        token = self.tokens[self.at]
        self.at += 1
        return token

    def keyword(self, word: str) -> bool:
        token = self.peek()
        if token.kind == "word" and token.text.lower() == word:
            self.at += 1
            return True
        return False

    def fail(self, expected: str, token: _Token | None = None) -> NoReturn:
        token = token or self.peek()
        raise _error(self.text, token.column, expected, token.shown())

    def either(self) -> Filter:
        items = [self.both()]
        while self.keyword("or"):
            items.append(self.both())
        return items[0] if len(items) == 1 else Or(tuple(items))

    def both(self) -> Filter:
        items = [self.unary()]
        while self.keyword("and"):
            items.append(self.unary())
        return items[0] if len(items) == 1 else And(tuple(items))

    def unary(self) -> Filter:
        token = self.peek()
        opens = token.kind == "paren" and token.text == "("
        if not opens and not (token.kind == "word" and token.text.lower() == "not"):
            return self.compare()
        if self.depth == MAX_NESTING:
            self.fail(f"at most {MAX_NESTING} nested 'not's and parentheses")
        self.at += 1
        self.depth += 1
        if opens:
            inner = self.either()
            if self.peek().text != ")" or self.peek().kind != "paren":
                self.fail(f"and, or, or ')' to close the '(' at column {token.column}")
            self.at += 1
        else:
            inner = Not(self.unary())
        self.depth -= 1
        return inner

    def compare(self) -> Filter:
        token = self.take()
        field = token.text.lower()
        if token.kind != "word" or field not in FIELDS:
            self.fail(f"a field ({', '.join(FIELDS)}) or '('", token)
        if self.peek().kind != "op":
            if FIELDS[field] == BOOL:  # `gps` alone: has one
                return Compare(field, "=", True)
            self.fail(f"an operator after {field} ({' '.join(_OPS_OF[FIELDS[field]])})")
        op_token = self.take()
        op = "=" if op_token.text == "==" else op_token.text
        allowed = _OPS_OF[FIELDS[field]]
        if op not in allowed:
            self.fail(f"an operator for {field} ({' '.join(allowed)})", op_token)
        value = self.take()
        if value.kind not in ("word", "quoted"):
            self.fail(f"{_EXAMPLE[FIELDS[field]]} after {op_token.text}", value)
        try:
            return Compare(field, op, _value(field, op, value.text))
        except ValueError as exc:
            self.fail(str(exc), value)


def parse_filter(text: str) -> Filter:
    """The text form (see the module docstring) as a `Filter`; one-line `AladinError` naming the column."""
    if not text.strip():
        raise AladinError(f"filter {text!r}: column 1: expected a field, found the end")
    return _Parser(text).parse()


# ---- the JSON form -------------------------------------------------------------------------------------


def filter_from_json(data: Any, where: str = "where") -> Filter:
    """The JSON form (see the module docstring) as a `Filter`; one-line `AladinError` naming the JSON path."""
    if isinstance(data, str):
        return parse_filter(data)
    if where.count(".") + where.count("[") > 2 * MAX_NESTING:
        raise AladinError(f"{where}: expected at most {MAX_NESTING} nested filters")
    if isinstance(data, list):
        if not data:
            raise AladinError(f"{where}: expected at least one filter in the list")
        return _joined(And, [filter_from_json(item, f"{where}[{n}]") for n, item in enumerate(data)])
    if not isinstance(data, Mapping) or not data:
        raise AladinError(f"{where}: expected a filter (a string, a non-empty object or list), got {data!r}")
    items: list[Filter] = []
    for key, value in data.items():
        at = f"{where}.{key}"
        if key in ("and", "or"):
            if not isinstance(value, list) or not value:
                raise AladinError(f"{at}: expected a non-empty list of filters")
            parts = [filter_from_json(item, f"{at}[{n}]") for n, item in enumerate(value)]
            items.append(_joined(And if key == "and" else Or, parts))
        elif key == "not":
            items.append(Not(filter_from_json(value, at)))
        elif key in FIELDS:
            tests = value if isinstance(value, Mapping) else {"=": value}
            if not tests:
                raise AladinError(f"{at}: expected a value or an object of operator → value")
            for op, raw in tests.items():
                try:
                    if op not in OPERATORS and op != "==":
                        raise ValueError(f"an operator ({' '.join(OPERATORS)})")
                    op = "=" if op == "==" else op
                    items.append(Compare(key, op, _value(key, op, raw)))
                except ValueError as exc:
                    raise AladinError(f"{at}[{op!r}]: expected {exc}, got {raw!r}") from None
        else:
            raise AladinError(f"{at}: expected a field ({', '.join(FIELDS)}) or and/or/not")
    return _joined(And, items)


def _joined(kind: type[And] | type[Or], items: list[Filter]) -> Filter:
    return items[0] if len(items) == 1 else kind(tuple(items))


def as_filter(where: Filter | str | Mapping[str, Any] | list[Any] | None) -> Filter | None:
    """What a caller gave as `where` (a `Filter`, the text form, or the JSON form) as a `Filter`."""
    if where is None or isinstance(where, Filter):
        return where
    return filter_from_json(where)


# ---- to SQL ------------------------------------------------------------------------------------------


def to_sql(where: Filter) -> tuple[str, list[Any]]:
    """A condition on the `image_facts` view and its parameters. Always true or false, never NULL: a comparison
    on a missing fact is false, so `not` and `!=` include photos without it."""
    if isinstance(where, Not):
        sql, params = to_sql(where.item)
        return f"NOT ({sql})", params
    if isinstance(where, And | Or):
        parts = [to_sql(item) for item in where.items]
        joiner = " AND " if isinstance(where, And) else " OR "
        return joiner.join(f"({sql})" for sql, _ in parts), [p for _, params in parts for p in params]
    if where.op == "!=":
        sql, params = to_sql(Compare(where.field, "=", where.value))
        return f"NOT ({sql})", params
    column, kind = where.field, FIELDS[where.field]
    if kind == DATE:
        start, end, _ = where.value
        sql, params = {
            "=": (f"{column} >= ? AND {column} < ?", [start, end]),
            "<": (f"{column} < ?", [start]),
            "<=": (f"{column} < ?", [end]),
            ">": (f"{column} >= ?", [end]),
            ">=": (f"{column} >= ?", [start]),
        }[where.op]
    elif kind == TEXT:
        sql = (
            f"instr(lower({column}), lower(?)) > 0"
            if where.op == "~"
            else f"lower({column}) {where.op} lower(?)"
        )
        params = [where.value]
    else:
        sql, params = f"{column} {where.op} ?", [int(where.value)]
    return f"coalesce({sql}, 0)", params
