"""The re-rank policy read from a checkpoint's info: validated choices, the legacy default, and round trips."""

from aladin.model.rerank import LEGACY_DEPTH, RerankSetting, depths_to_try, has_setting


def test_validated_setting_round_trips_through_checkpoint_info() -> None:
    setting = RerankSetting.chosen(20, 1.0, val_rsum=380.0, matching_val_rsum=375.0)
    info = setting.into({"fit": {"best_epoch": 3}})
    assert has_setting(info) and info["fit"] == {"best_epoch": 3}
    assert RerankSetting.from_info(info) == setting
    assert setting.helps and setting.default_depth == 20
    assert (
        setting.resolve_depth(None) == 20 and setting.resolve_depth(0) == 0 and setting.resolve_depth(7) == 7
    )
    assert setting.describe() == "re-rank top 20 (fused, weight 1)"


def test_a_setting_that_did_not_help_is_off_by_default() -> None:
    setting = RerankSetting.chosen(50, 0.0, val_rsum=370.0, matching_val_rsum=375.0)
    assert not setting.helps and setting.default_depth == 0 and setting.resolve_depth(None) == 0
    assert setting.describe() == "re-rank top 50 [off by default: no gain on validation]"


def test_checkpoints_without_a_setting_get_the_legacy_default() -> None:
    setting = RerankSetting.from_info({"fit": {}})
    assert not has_setting({"fit": {}})
    assert not setting.validated and setting.helps
    assert setting.default_depth == LEGACY_DEPTH and setting.fusion == 0.0


def test_depths_tried_on_validation_stop_at_the_recipe_depth() -> None:
    assert depths_to_try(100) == [10, 20, 50, 100]
    assert depths_to_try(30) == [10, 20, 30]
    assert depths_to_try(5) == [5]
