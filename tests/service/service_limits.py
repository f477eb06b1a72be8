"""Small service limits, so that the tests can cross them with small files."""

from aladin.service.config import ServiceConfig

LIMITS = ServiceConfig(queue_size=8, max_upload_bytes=20_000, max_pixels=256 * 256, max_k=20)
#: The service answers only requests naming a loopback host (or an allowed one); TestClient's default is not.
LOCAL = "http://127.0.0.1"


def assert_same_hits(got: list[list[dict]], expected: list[list[dict]]) -> None:
    """The same items in the same order with the same fields, scores equal to float tolerance (a batch pads
    queries to a common length, which may move the last bits)."""
    assert len(got) == len(expected)
    for hits, want in zip(got, expected, strict=True):
        assert [h["id"] for h in hits] == [h["id"] for h in want]
        for hit, other in zip(hits, want, strict=True):
            for name in ("score", "first_stage_score"):
                assert (hit[name] is None) == (other[name] is None)
                if hit[name] is not None:
                    assert abs(hit[name] - other[name]) <= 1e-5 + 1e-5 * abs(other[name]), (name, hit, other)
            rest = {n: v for n, v in hit.items() if n not in ("score", "first_stage_score")}
            assert rest == {n: v for n, v in other.items() if n not in ("score", "first_stage_score")}
