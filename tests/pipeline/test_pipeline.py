"""The verbs end to end on a tiny synthetic dataset with the real encoders: extract → train → evaluate."""

import json
import shutil

import pytest

from aladin import pipeline
from aladin.config import ModelConfig, RecipeConfig, RunConfig, TrainConfig, config_to_dict
from aladin.data.synthetic import SyntheticConfig, generate_synthetic_dataset
from aladin.errors import AladinError


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    generate_synthetic_dataset(root / "data", SyntheticConfig(seed=1, n_train=24, n_val=8, n_test=8))
    pipeline.extract(root / "data", root / "cache", batch_size=16)
    return root / "cache"


def test_evaluate_a_model_on_an_unseen_dataset_folder(cache, tmp_path):
    run = tmp_path / "run"
    pipeline.train(cache, run, _recipe(train_infonce_student=False))
    unseen = tmp_path / "unseen"
    generate_synthetic_dataset(unseen, SyntheticConfig(seed=9, n_train=2, n_val=0, n_test=6))
    results = pipeline.evaluate_on_data(unseen, run / "model", tmp_path / "unseen-cache", quiet=True)
    assert [r.name for r in results][:2] == [
        "alignment head (teacher, all pairs)",
        "matching head (distill+infonce)",
    ]
    assert (tmp_path / "unseen-cache" / "eval-test" / "results.json").is_file()
    with pytest.raises(AladinError, match="no 'val' split"):
        pipeline.evaluate_on_data(unseen, run / "model", tmp_path / "c2", split="val")


def _recipe(matching_input="frozen", **overrides):
    fast = dict(epochs=2, batch_size=8, warmup_steps=1)
    return RecipeConfig(
        model=ModelConfig(embed_dim=32, global_dim=16, ff_dim=64, num_heads=2, matching_input=matching_input),
        alignment=TrainConfig(stage="alignment", **fast),
        matching=TrainConfig(stage="matching", loss="distill+infonce", **fast),
        baseline=TrainConfig(stage="baseline", **fast),
        **{"rerank_k": 4, **overrides},
    )


def test_train_then_evaluate_writes_every_artefact(cache, tmp_path):
    run = tmp_path / "run"
    report = pipeline.train(cache, run, _recipe(), RunConfig(device="cpu"))
    assert set(report.stages) == {
        "linear baseline",
        "alignment head",
        "matching head (InfoNCE student)",
        "matching head (distill+infonce)",
    }
    results = pipeline.evaluate(cache, run, quiet=True)
    names = [r.name for r in results]
    assert names[0].startswith("alignment head") and names[-1] == "linear global baseline"
    assert any(n.startswith("matching + re-rank top 4") for n in names)
    assert any(n.startswith("InfoNCE student + re-rank top 4") for n in names)
    saved = json.loads((run / "eval-test" / "results.json").read_text())
    assert [r["name"] for r in saved["results"]] == names
    assert (run / "eval-test" / "recall.png").stat().st_size > 1000
    assert "rsum" in (run / "eval-test" / "results.md").read_text()
    # a rerun with the same recipe reuses the finished stages, wherever it runs (the device is no part of the
    # recipe); another recipe is refused, not mixed in
    assert pipeline.train(cache, run, _recipe()).stages == report.stages
    # a student saved before the re-rank choice was recorded gets it on the next run
    config = json.loads((run / "model" / "config.json").read_text())
    del config["info"]["rerank"]
    (run / "model" / "config.json").write_text(json.dumps(config))
    pipeline.train(cache, run, _recipe())
    assert json.loads((run / "model" / "config.json").read_text())["info"]["rerank"]["k"] == 4
    saved_recipe = json.loads((run / "recipe.json").read_text())
    # a run from before that setting (and the schema versions) existed: the same recipe, once migrated
    del saved_recipe["model"]["word_weights"], saved_recipe["config_schema_version"]
    (run / "recipe.json").write_text(json.dumps(saved_recipe))
    assert pipeline.train(cache, run, _recipe()).stages == report.stages
    with pytest.raises(AladinError, match=r"another recipe \(recipe\.rerank_k was 4 when saved, 7 now\)"):
        pipeline.train(cache, run, _recipe(rerank_k=7))
    # a teacher brought from a run with other heads or another cache is refused before anything is written
    other = tmp_path / "other-run"
    other.mkdir()
    shutil.copytree(run / "alignment-teacher", other / "alignment-teacher")
    with pytest.raises(AladinError, match=r"saved with other settings .*matching_input was 'frozen'"):
        pipeline.train(cache, other, _recipe(matching_input="contextual"))
    teacher_config = json.loads((other / "alignment-teacher" / "config.json").read_text())
    teacher_config["config"]["image_encoder"]["image_size"] = 160
    (other / "alignment-teacher" / "config.json").write_text(json.dumps(teacher_config))
    with pytest.raises(AladinError, match=r"config\.image_encoder\.image_size was 160 when saved, 224 now"):
        pipeline.train(cache, other, _recipe())
    assert sorted(p.name for p in other.iterdir()) == ["alignment-teacher"]


def test_extract_from_precomputed_regions_without_the_pictures(tmp_path):
    import numpy as np

    from aladin.config import ImageEncoderConfig
    from aladin.encoders.cache import load_split

    data, regions = tmp_path / "data", tmp_path / "regions"
    data.mkdir()
    regions.mkdir()
    rng = np.random.default_rng(0)
    lines = []
    for i, count in enumerate((3, 5)):  # a different number of detector regions per image
        np.savez(
            regions / f"img{i}.npz",
            features=rng.standard_normal((count, 16)).astype(np.float32),
            boxes=np.tile([0.1, 0.1, 0.5, 0.6], (count, 1)).astype(np.float32),
        )
        lines.append(
            json.dumps({"image": f"img{i}.jpg", "id": f"img{i}", "captions": [f"thing {i}"], "split": "test"})
        )
    (data / "captions.jsonl").write_text("\n".join(lines) + "\n")  # no image files at all
    image_cfg = ImageEncoderConfig(name="precomputed", features_path=str(regions))
    pipeline.extract(data, tmp_path / "cache", image_encoder=image_cfg)
    cached = load_split(tmp_path / "cache", "test")
    assert cached.arrays["regions"].shape == (2, 5, 16)
    assert cached.arrays["region_mask"].sum(axis=1).tolist() == [3, 5]


def _tagged_dataset(
    root,
    words=(
        "dog",
        "car",
        "tree",
        "boat",
        "horse",
        "pizza",
        "clock",
        "bench",
        "kite",
        "train",
        "sheep",
        "cake",
        "chair",
        "bottle",
        "umbrella",
        "bird",
    ),
):
    """Detector regions that are pure noise, and object tags that name what the captions mention."""
    import numpy as np

    data, regions = root / "data", root / "regions"
    data.mkdir()
    regions.mkdir()
    rng = np.random.default_rng(0)
    lines = []
    for i in range(140):
        objects = [words[j] for j in rng.choice(len(words), 3, replace=False)]
        np.savez(
            regions / f"img{i}.npz",
            features=rng.standard_normal((4, 8)).astype(np.float32),
            boxes=np.tile([0.1, 0.1, 0.5, 0.6], (4, 1)).astype(np.float32),
            tags=np.array(objects),
        )
        captions = [f"a {objects[0]} next to a {objects[1]}", f"there is a {objects[2]} and a {objects[0]}"]
        split = "train" if i < 80 else "val" if i < 100 else "test"
        lines.append(
            json.dumps({"image": f"img{i}.jpg", "id": f"img{i}", "captions": captions, "split": split})
        )
    (data / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return data, regions


def test_object_tags_let_words_align_to_what_the_detector_named(tmp_path):
    from aladin.config import ImageEncoderConfig

    data, regions = _tagged_dataset(tmp_path)
    fast = dict(batch_size=16, warmup_steps=1, patience=20)
    recipe = RecipeConfig(
        model=ModelConfig(embed_dim=32, global_dim=16, ff_dim=64, num_heads=2),
        alignment=TrainConfig(stage="alignment", epochs=15, lr=2e-3, **fast),
        matching=TrainConfig(stage="matching", loss="distill", epochs=1, **fast),
        baseline=TrainConfig(stage="baseline", epochs=1, **fast),
        train_infonce_student=False,
        rerank_k=4,
    )
    recall = {}
    for tags in ("", "all-MiniLM-L6-v2"):
        image_cfg = ImageEncoderConfig(name="precomputed", features_path=str(regions), tags_text_encoder=tags)
        pipeline.extract(data, tmp_path / f"cache{bool(tags)}", image_encoder=image_cfg)
        pipeline.train(tmp_path / f"cache{bool(tags)}", tmp_path / f"run{bool(tags)}", recipe)
        results = pipeline.evaluate(
            tmp_path / f"cache{bool(tags)}", tmp_path / f"run{bool(tags)}", quiet=True
        )
        recall[bool(tags)] = results[0].metrics["t2i_r5"]
    # 40 test images: chance R@5 is 12.5%; noise regions alone stay near it, the tags carry the content
    assert recall[True] >= 50 and recall[True] > recall[False] + 25, recall


def test_demo_refuses_a_run_folder_of_another_recipe_before_generating_anything(tmp_path):
    (tmp_path / "run").mkdir()
    default = RecipeConfig()  # what `aladin train` builds: not the demo's student
    (tmp_path / "run" / "recipe.json").write_text(json.dumps(config_to_dict(default)))
    demo_dim = pipeline.demo_recipe().model.global_dim
    message = (
        rf"recipe\.model\.global_dim was {default.model.global_dim} when saved, {demo_dim} now\); delete"
    )
    with pytest.raises(AladinError, match=message):
        pipeline.demo(tmp_path)
    assert not (tmp_path / "data").exists() and not (tmp_path / "cache").exists()


def test_the_pointing_game_joins_the_evaluation_results(cache, tmp_path):
    run = tmp_path / "run"
    pipeline.train(cache, run, _recipe(train_infonce_student=False))
    pipeline.evaluate(cache, run, quiet=True)
    pipeline.report_pointing(cache.parent / "data", cache, run)
    saved = json.loads((run / "eval-test" / "results.json").read_text())
    games = saved["pointing"]
    assert len(games) == 3 and saved["results"]  # beside the retrieval rows, not instead of them
    # every way of drawing the maps plays the same words: each named colour and shape of the 8 test scenes
    assert len({g["words"] for g in games}) == 1 and games[0]["words"] >= 8 * 5
    assert all(0 <= g["hits"] <= g["words"] and 0 < g["chance"] < 0.5 for g in games)
    assert "pointing game" in (run / "eval-test" / "results.md").read_text()


def test_training_fits_a_calibration_that_evaluate_measures(cache, tmp_path):
    import numpy as np

    from aladin.encoders.cache import load_split
    from aladin.evaluate.calibration import served_samples
    from aladin.model import AladinModel
    from aladin.model.calibration import CALIBRATION_FILE, expected_calibration_error
    from aladin.model.features import FeatureTensors

    run = tmp_path / "run"
    pipeline.train(cache, run, _recipe(train_infonce_student=False))
    fitted = json.loads((run / "model" / CALIBRATION_FILE).read_text())
    assert fitted["fitted_on"].startswith("val split") and fitted["top_k"] == 10
    model = AladinModel.from_pretrained(run / "model")
    assert model.calibration is not None
    # on the test split, never fitted on, the calibrated kNN score is closer to the truth than the raw one
    test = FeatureTensors.from_arrays(load_split(cache, "test").arrays)
    for key, s in served_samples(model, test).items():
        direction, stage = key.split("/")
        confidence = model.calibration.confidence(direction, stage == "reranked", s.scores)
        assert np.all(np.diff(confidence[np.argsort(s.scores)]) >= 0), key  # monotone in the score
        if stage == "knn":
            raw = expected_calibration_error(np.clip(s.scores, 0, 1), s.labels)
            assert expected_calibration_error(confidence, s.labels) < raw, key

    pipeline.evaluate(cache, run, quiet=True)
    saved = json.loads((run / "eval-test" / "results.json").read_text())["extra"]["calibration"]
    assert (
        set(saved["ece"]) == {"text_to_image", "image_to_text", "both"} and saved["bins"] == "10 equal-width"
    )
    assert 0 <= saved["ece"]["both"] < 1
    assert (run / "eval-test" / "reliability.png").stat().st_size > 1000
    assert "expected calibration error" in (run / "eval-test" / "results.md").read_text()

    # refitted for an existing checkpoint by `aladin calibrate`; a checkpoint without one evaluates without
    (run / "model" / CALIBRATION_FILE).unlink()
    pipeline.evaluate(cache, run, quiet=True, out_dir=tmp_path / "uncalibrated")
    assert "calibration" not in json.loads((tmp_path / "uncalibrated" / "results.json").read_text())["extra"]
    assert not (tmp_path / "uncalibrated" / "reliability.png").exists()
    pipeline.calibrate(cache, run)
    assert json.loads((run / "model" / CALIBRATION_FILE).read_text()) == fitted
