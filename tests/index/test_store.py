from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from aladin.errors import AladinError, CheckpointError
from aladin.index import store as store_module
from aladin.index.store import CODECS, EncodedChunk, PackedStore, SegmentWriter


def unit_rows(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def chunk(counts: list[int], dim: int, seed: int, boxes: np.ndarray | None = None) -> EncodedChunk:
    rows = unit_rows(sum(counts), dim, seed)
    return EncodedChunk(np.zeros((len(counts), 4), np.float32), rows, np.array(counts), boxes)


def write_segment(directory: Path, chunks: list[EncodedChunk], dtype: str, first_id: int, generation: int):
    writer = SegmentWriter(directory, "regions", generation, first_id, dtype, chunks[0].rows.shape[1])
    for c in chunks:
        writer.append(c)
    return writer.finish()


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_lookup_reads_variable_length_items_across_segments(tmp_path: Path, dtype: str) -> None:
    first = [chunk([3, 1, 4], 32, 0), chunk([2], 32, 1)]
    second = [chunk([5, 0, 2], 32, 2)]
    entries = [
        write_segment(tmp_path, first, dtype, 0, 1)[0],
        write_segment(tmp_path, second, dtype, 4, 2)[0],
    ]
    store = PackedStore(tmp_path, entries, 32)
    assert store.num_items == 7

    rows, mask = store.lookup([6, 0, 5, 2])
    assert rows.shape == (4, 4, 32) and rows.dtype.is_floating_point
    assert mask.sum(dim=1).tolist() == [2, 3, 0, 4]
    expected = {6: second[0].rows[5:7], 0: first[0].rows[0:3], 2: first[0].rows[4:8]}
    tolerance = 2e-3 if dtype == "float16" else 5e-2
    for position, item in enumerate([6, 0, 5, 2]):
        real = rows[position][mask[position]].numpy()
        np.testing.assert_allclose(real, expected.get(item, np.zeros((0, 32))), atol=tolerance)
        assert not rows[position][~mask[position]].any()
    with pytest.raises(AladinError, match="unknown item id 7"):
        store.lookup([7])


def test_int8_store_is_a_quarter_of_float32_with_small_reconstruction_error(tmp_path: Path) -> None:
    rows = unit_rows(2000, 256)
    codec = CODECS["int8"]
    decoded = codec.decode(torch.from_numpy(codec.encode(rows))).numpy()
    cosine = (rows * decoded).sum(axis=1)
    assert cosine.min() > 0.998 and cosine.mean() > 0.999
    entry, files = write_segment(
        tmp_path, [EncodedChunk(rows[:10, :4], rows, np.full(10, 200))], "int8", 0, 1
    )
    assert files[entry["data"]]["bytes"] == rows.nbytes // 4
    stats = entry["reconstruction"]
    assert stats["mean_cosine"] == pytest.approx(cosine.mean(), abs=1e-6)
    assert stats["min_cosine"] == pytest.approx(cosine.min(), abs=1e-6)
    assert 0 < stats["mean_l2_error"] < 0.06


def test_shared_boxes_are_stored_once_and_differing_boxes_per_row(tmp_path: Path) -> None:
    grid = np.random.default_rng(0).random((3, 5)).astype(np.float16)
    same = [chunk([3, 3], 8, 0, np.tile(grid, (2, 1))), chunk([3], 8, 1, grid)]
    entry, files = write_segment(tmp_path, same, "float16", 0, 1)
    assert entry["boxes_shared"] and files[entry["boxes"]]["bytes"] == grid.nbytes
    store = PackedStore(tmp_path, [entry], 8)
    np.testing.assert_array_equal(store.boxes(2), grid.astype(np.float32))

    other = np.random.default_rng(1).random((2, 5)).astype(np.float16)
    mixed = [chunk([3], 8, 0, grid), chunk([3, 2], 8, 1, np.concatenate([grid, other]))]
    entry, _ = write_segment(tmp_path, mixed, "float16", 0, 2)
    assert not entry["boxes_shared"]
    store = PackedStore(tmp_path, [entry], 8)
    np.testing.assert_array_equal(store.boxes(0), grid.astype(np.float32))
    np.testing.assert_array_equal(store.boxes(1), grid.astype(np.float32))
    np.testing.assert_array_equal(store.boxes(2), other.astype(np.float32))


def test_writer_refuses_rows_of_the_wrong_size(tmp_path: Path) -> None:
    writer = SegmentWriter(tmp_path, "regions", 1, 0, "float16", 16)
    with pytest.raises(AladinError, match="dim 16"):
        writer.append(chunk([2], 8, 0))
    writer.discard()
    assert not list(tmp_path.iterdir())


def clustered_rows(n: int, dim: int, clusters: int = 32, noise: float = 0.15, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = unit_rows(clusters, dim, seed + 1)
    rows = centres[rng.integers(0, clusters, n)] + noise * rng.normal(size=(n, dim)) / np.sqrt(dim)
    rows = rows.astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_pq_store_is_m_bytes_per_row_reconstructs_well_and_is_reused(tmp_path: Path) -> None:
    dim, n = 256, 3000
    rows = clustered_rows(n, dim)
    counts = np.full(n // 30, 30)
    first = EncodedChunk(np.zeros((len(counts), 4), np.float32), rows, counts)
    entry, files = write_segment(tmp_path, [first], "pq", 0, 1)
    m = dim // 8
    assert entry["dtype"] == "pq" and entry["quantizer"] in files
    bytes_per_row = files[entry["data"]]["bytes"] / n
    assert bytes_per_row == m * 8 / 8
    assert bytes_per_row / (dim * 4) <= 1 / 16  # 1/32 of float32 at 8 bits
    stats = entry["reconstruction"]
    assert stats["mean_cosine"] > 0.95 and stats["min_cosine"] > 0.8

    store = PackedStore(tmp_path, [entry], dim)
    decoded, mask = store.lookup(np.arange(len(counts)))
    real = decoded[mask].numpy()
    np.testing.assert_allclose(np.linalg.norm(real, axis=1), 1.0, atol=1e-5)  # re-normalised
    cosine = (real * rows).sum(axis=1)
    assert cosine.mean() == pytest.approx(stats["mean_cosine"], abs=1e-3)

    # A later segment reuses the trained quantiser (no new one), and reading again gives identical rows.
    more = clustered_rows(60, dim, seed=0)
    writer = SegmentWriter(tmp_path, "regions", 2, len(counts), "pq", dim, quantizer=store.quantizer)
    writer.append(EncodedChunk(np.zeros((2, 4), np.float32), more, np.array([30, 30])))
    second, second_files = writer.finish()
    assert second["quantizer"] == entry["quantizer"] and entry["quantizer"] not in second_files
    reopened = PackedStore(tmp_path, [entry, second], dim)
    again, again_mask = reopened.lookup(np.arange(len(counts)))
    assert torch.equal(again, decoded) and torch.equal(again_mask, mask)
    late, late_mask = reopened.lookup([len(counts) + 1, 0])
    assert (late[late_mask.logical_not()] == 0).all()
    expected = store.quantizer.decode(torch.from_numpy(store.quantizer.encode(more[30:])))
    torch.testing.assert_close(late[0], expected)


def test_pq_needs_enough_rows_to_train(tmp_path: Path) -> None:
    with pytest.raises(AladinError, match="needs at least 256 rows"):
        write_segment(tmp_path, [chunk([10, 10], 16, 0)], "pq", 0, 1)
    assert not list(tmp_path.iterdir())  # the failed segment's temporaries are removed


def residual_segment(directory: Path, rows: np.ndarray, dtype: str, generation: int, centroids: int = 32):
    """One segment of 30-row items, trained (`centroids` k-means centroids) on its own rows."""
    counts = np.full(len(rows) // 30, 30)
    writer = SegmentWriter(
        directory, "regions", generation, 0, dtype, rows.shape[1], residual_centroids=centroids
    )
    writer.append(EncodedChunk(np.zeros((len(counts), 4), np.float32), rows, counts))
    return writer.finish()


@pytest.mark.parametrize(("dtype", "bits", "mean_cosine"), [("residual2", 2, 0.97), ("residual1", 1, 0.94)])
def test_residual_store_is_an_id_plus_bits_per_dimension_and_its_codebook_is_reused(
    tmp_path: Path, dtype: str, bits: int, mean_cosine: float
) -> None:
    dim, n = 256, 3000
    rows = clustered_rows(n, dim, noise=0.5)
    entry, files = residual_segment(tmp_path, rows, dtype, 1)
    assert entry["dtype"] == dtype and entry["quantizer"] in files
    assert files[entry["data"]]["bytes"] == n * (2 + dim * bits // 8)
    stats = entry["reconstruction"]
    assert stats["mean_cosine"] > mean_cosine

    store = PackedStore(tmp_path, [entry], dim)
    decoded, mask = store.lookup(np.arange(n // 30))
    real = decoded[mask].numpy()
    np.testing.assert_allclose(np.linalg.norm(real, axis=1), 1.0, atol=1e-5)  # re-normalised
    assert (real * rows).sum(axis=1).mean() == pytest.approx(stats["mean_cosine"], abs=1e-3)

    # A later segment reuses the codebook; items of both read back as the codec decodes them, padding as zeros.
    more = clustered_rows(50, dim, noise=0.5, seed=5)
    writer = SegmentWriter(tmp_path, "regions", 2, n // 30, dtype, dim, quantizer=store.quantizer)
    writer.append(EncodedChunk(np.zeros((2, 4), np.float32), more, np.array([30, 20])))
    second, second_files = writer.finish()
    assert second["quantizer"] == entry["quantizer"] and entry["quantizer"] not in second_files
    reopened = PackedStore(tmp_path, [entry, second], dim)
    again, again_mask = reopened.lookup(np.arange(n // 30))
    assert torch.equal(again, decoded) and torch.equal(again_mask, mask)
    late, late_mask = reopened.lookup([n // 30 + 1, 0])
    assert (late[~late_mask] == 0).all()
    expected = store.quantizer.decode(torch.from_numpy(store.quantizer.encode(more[30:50])))
    torch.testing.assert_close(late[0][:20], expected)


def test_centroid_ids_pay_for_themselves_on_clustered_rows(tmp_path: Path) -> None:
    """The 2-byte id is what separates the residual store from plain per-dimension quantiles: it must help."""
    rows = clustered_rows(3000, 64, noise=0.5)
    with_ids, files = residual_segment(tmp_path, rows, "residual2", 1)
    without, other_files = residual_segment(tmp_path, rows, "residual2", 2, centroids=1)
    assert (
        files[with_ids["data"]]["bytes"] == 3000 * 18 and other_files[without["data"]]["bytes"] == 3000 * 16
    )
    assert with_ids["reconstruction"]["mean_cosine"] > without["reconstruction"]["mean_cosine"] + 0.03


def test_a_segment_read_with_another_stores_codebook_is_refused(tmp_path: Path) -> None:
    rows = clustered_rows(300, 64)
    two, _ = residual_segment(tmp_path, rows, "residual2", 1)
    one, _ = residual_segment(tmp_path, rows, "residual1", 2)
    with pytest.raises(CheckpointError) as error:
        PackedStore(tmp_path, [{**two, "quantizer": one["quantizer"]}], 64)
    message = str(error.value)
    assert "a residual1 codebook of 64-d rows, but its segments are residual2 of 64-d rows" in message
    assert "\n" not in message
    (tmp_path / two["quantizer"]).write_bytes(b"not a codebook")
    with pytest.raises(CheckpointError, match="cannot read the residual codebook"):
        PackedStore(tmp_path, [two], 64)


def test_residual_needs_as_many_rows_as_centroids(tmp_path: Path) -> None:
    with pytest.raises(AladinError, match="training 32 centroids needs at least 32 rows"):
        residual_segment(tmp_path, unit_rows(30, 16), "residual2", 1)
    assert not list(tmp_path.iterdir())  # the failed segment's temporaries are removed


def test_a_codebook_of_another_code_size_is_refused_before_reading_the_segment(tmp_path: Path) -> None:
    """Same codec and dimension, other centroid count (2-byte ids or none): the rows would be misread."""
    rows = clustered_rows(300, 64)
    with_ids, _ = residual_segment(tmp_path, rows, "residual2", 1)
    without, _ = residual_segment(tmp_path, rows, "residual2", 2, centroids=1)
    for entry, other in ((with_ids, without), (without, with_ids)):
        with pytest.raises(CheckpointError) as error:
            PackedStore(tmp_path, [{**entry, "quantizer": other["quantizer"]}], 64)
        message = str(error.value)
        assert entry["data"] in message and "bytes" in message and "\n" not in message


@pytest.mark.parametrize(
    "arrays",
    [
        lambda c: {"centroids": c.centroids, "cutoffs": c.cutoffs[:16], "buckets": c.buckets[:16]},
        lambda c: {"centroids": c.centroids, "cutoffs": c.cutoffs[:, :2], "buckets": c.buckets[:, :3]},
        lambda c: {"centroids": c.centroids[0], "cutoffs": c.cutoffs, "buckets": c.buckets},
    ],
    ids=["fewer-dimensions", "three-levels", "one-dimensional-centroids"],
)
def test_a_malformed_residual_codebook_is_refused_in_one_line(tmp_path: Path, arrays) -> None:
    rows = clustered_rows(300, 64)
    entry, _ = residual_segment(tmp_path, rows, "residual2", 1)
    codec = PackedStore(tmp_path, [entry], 64).quantizer
    with open(tmp_path / entry["quantizer"], "wb") as handle:
        np.savez(handle, **arrays(codec))
    with pytest.raises(CheckpointError) as error:
        PackedStore(tmp_path, [entry], 64)
    assert "residual codebook" in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("dtype", ["residual2", "residual1"])
def test_a_later_residual_segment_takes_items_without_rows(tmp_path: Path, dtype: str) -> None:
    """As the other stores do: a chunk whose items have no rows at all is stored (0 code bytes), not a crash."""
    entry, _ = residual_segment(tmp_path, clustered_rows(300, 64), dtype, 1)
    store = PackedStore(tmp_path, [entry], 64)
    writer = SegmentWriter(tmp_path, "regions", 2, 10, dtype, 64, quantizer=store.quantizer)
    writer.append(EncodedChunk(np.zeros((2, 4), np.float32), np.zeros((0, 64), np.float32), np.array([0, 0])))
    writer.append(EncodedChunk(np.zeros((1, 4), np.float32), clustered_rows(3, 64, seed=4), np.array([3])))
    second, _ = writer.finish()
    rows, mask = PackedStore(tmp_path, [entry, second], 64).lookup([10, 11, 12])
    assert mask.sum(dim=1).tolist() == [0, 0, 3]


@pytest.mark.parametrize(
    ("dtype", "settings"), [("residual2", {"residual_centroids": 128}), ("pq", {"pq_nbits": 7})]
)
def test_more_centroids_than_the_training_sample_are_trained_on_enough_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dtype: str, settings: dict[str, int]
) -> None:
    """A setting the index accepts (up to 65536 residual centroids, 2**16 pq ones) must not be refused at the end
    of a first segment that has the rows, because the training sample is capped below it."""
    monkeypatch.setattr(store_module, "TRAIN_SAMPLE", 100)
    writer = SegmentWriter(tmp_path, "regions", 1, 0, dtype, 16, **settings)
    writer.append(EncodedChunk(np.zeros((10, 4), np.float32), clustered_rows(300, 16), np.full(10, 30)))
    entry, _ = writer.finish()
    assert PackedStore(tmp_path, [entry], 16).lookup([0])[1].sum() == 30


@pytest.mark.parametrize(
    ("dtype", "settings", "message"),
    [
        ("residual1", {}, "1-bit codes of 12-d rows do not fill whole bytes"),
        ("pq", {"pq_m": 5}, "5 sub-quantisers do not divide the row dimension 12"),
    ],
)
def test_a_codec_that_cannot_encode_the_rows_is_refused_before_any_is_encoded(
    tmp_path: Path, dtype: str, settings: dict[str, int], message: str
) -> None:
    """Not at the end of the first segment, after the whole collection was encoded."""
    with pytest.raises(AladinError, match=message):
        SegmentWriter(tmp_path, "regions", 1, 0, dtype, 12, **settings)
    assert not list(tmp_path.iterdir())
