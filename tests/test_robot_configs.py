"""Shipped robot configs load, and malformed configs are rejected by file and field."""

from __future__ import annotations

import copy
import math
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.errors import ConfigError
from pipeline.robot_config import (
    builtin_config_dir,
    builtin_models,
    load_robot_config,
    parse_robot_config,
)
from pipeline.standard_joints import STANDARD_INDEX

SHIPPED = ["fourier_gr1", "unitree_g1", "unitree_h1"]

# G1's first joint in its motor order; error fields name it.
FIRST = "joints[0] (left_hip_pitch_joint)"


@pytest.fixture
def base() -> dict[str, Any]:
    """A valid config as a plain mapping (the shipped G1 file), free to mutate."""
    text = (builtin_config_dir() / "unitree_g1.yaml").read_text(encoding="utf-8")
    return copy.deepcopy(yaml.safe_load(text))


def write(tmp_path: Path, data: Any, name: str = "robot.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def rejected(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_robot_config(path)
    assert str(path) in str(info.value)
    return info.value


# --- shipped configs -----------------------------------------------------------------


def test_the_humanoid_configs_and_aloha_are_shipped():
    assert builtin_models() == sorted([*SHIPPED, "aloha"])


@pytest.mark.parametrize("model", SHIPPED)
def test_shipped_config_loads_with_whole_body_joints_and_three_cameras(model):
    config = load_robot_config(builtin_config_dir() / f"{model}.yaml")

    assert config.model == model
    assert config.dof >= 19
    assert len(config.cameras) == 3
    assert all(j.position_min < j.position_max for j in config.joints)
    assert all(j.velocity_max > 0 and j.effort_max > 0 for j in config.joints)
    assert all(name in STANDARD_INDEX for name in config.standard_names)


@pytest.mark.parametrize("model", SHIPPED)
def test_shipped_config_has_a_head_and_two_wrist_cameras_at_vga_30fps(model):
    config = load_robot_config(model)

    assert [c.name for c in config.cameras] == ["head_left", "wrist_left", "wrist_right"]
    for cam in config.cameras:
        assert (cam.width, cam.height, cam.fps) == (640, 480, 30)
        assert 30 <= cam.latency_ms <= 80


def test_config_loads_by_model_name():
    config = load_robot_config("unitree_g1")

    assert config.model == "unitree_g1"
    assert Path(config.path) == builtin_config_dir() / "unitree_g1.yaml"
    assert config.joint_names[:2] == ("left_hip_pitch_joint", "left_hip_roll_joint")


def test_unknown_model_name_is_rejected_listing_shipped_models():
    with pytest.raises(ConfigError) as info:
        load_robot_config("no_such_robot")

    assert info.value.field == "robot"
    assert "unitree_h1" in str(info.value)


# --- malformed configs ---------------------------------------------------------------


def test_missing_top_level_field_is_rejected(tmp_path, base):
    del base["vendor"]

    assert rejected(write(tmp_path, base)).field == "vendor"


def test_missing_joint_field_is_rejected(tmp_path, base):
    del base["joints"][0]["effort"]

    assert rejected(write(tmp_path, base)).field == f"{FIRST}.effort"


def test_a_misspelled_field_is_named_beside_the_missing_one(tmp_path, base):
    base["joints"][0]["velocty"] = base["joints"][0].pop("velocity")

    error = rejected(write(tmp_path, base))
    assert error.field == f"{FIRST}.velocity"
    assert "velocty" in error.problem and "misspelled" in error.problem


def test_wrong_type_is_rejected(tmp_path, base):
    base["joints"][0]["velocity"] = "fast"

    assert rejected(write(tmp_path, base)).field == f"{FIRST}.velocity"


def test_boolean_where_a_number_is_expected_is_rejected(tmp_path, base):
    base["streams"]["joint_state_hz"] = True

    assert rejected(write(tmp_path, base)).field == "streams.joint_state_hz"


def test_position_min_equal_to_max_is_rejected(tmp_path, base):
    base["joints"][0]["position"] = [0.5, 0.5]

    assert rejected(write(tmp_path, base)).field == f"{FIRST}.position"


def test_position_min_above_max_is_rejected(tmp_path, base):
    base["joints"][0]["position"] = [2.0, -2.0]

    assert rejected(write(tmp_path, base)).field == f"{FIRST}.position"


def test_unknown_standard_joint_name_is_rejected(tmp_path, base):
    base["joints"][0]["standard"] = "left_tail_wag"

    assert rejected(write(tmp_path, base)).field == f"{FIRST}.standard"


def test_duplicate_joint_name_is_rejected(tmp_path, base):
    base["joints"][1]["name"] = base["joints"][0]["name"]

    err = rejected(write(tmp_path, base))
    assert err.field == "joints"
    assert "left_hip_pitch_joint" in err.problem


def test_two_joints_on_one_standard_name_are_rejected(tmp_path, base):
    base["joints"][1]["standard"] = base["joints"][0]["standard"]

    assert rejected(write(tmp_path, base)).field == "joints"


def test_unknown_top_level_field_is_rejected(tmp_path, base):
    base["colour"] = "red"

    assert rejected(write(tmp_path, base)).field == "colour"


def test_unknown_joint_field_is_rejected(tmp_path, base):
    base["joints"][0]["gear_ratio"] = 14.3

    assert rejected(write(tmp_path, base)).field == f"{FIRST}.gear_ratio"


def test_unknown_fields_with_non_text_keys_are_rejected(tmp_path, base):
    base[1] = "one"
    base["zzz"] = "text"

    assert rejected(write(tmp_path, base)).field == "1"


def test_non_yaml_text_is_rejected(tmp_path):
    path = tmp_path / "robot.yaml"
    path.write_text("model: [unitree_g1\nvendor: {Unitree\n", encoding="utf-8")

    assert rejected(path).field == "<file>"


def test_text_that_is_not_a_mapping_is_rejected(tmp_path):
    path = tmp_path / "robot.yaml"
    path.write_text("just a sentence about a robot\n", encoding="utf-8")

    assert rejected(path).field == "<top level>"


def test_non_utf8_file_is_rejected(tmp_path):
    path = tmp_path / "robot.yaml"
    path.write_bytes(b"\xff\xfe\x00model: g1\n")

    assert rejected(path).field == "<file>"


def test_camera_with_zero_width_is_rejected(tmp_path, base):
    base["cameras"][0]["width"] = 0

    assert rejected(write(tmp_path, base)).field == "cameras[0] (head_left).width"


def test_name_with_trailing_newline_is_rejected(tmp_path, base):
    base["model"] = "unitree_g1\n"

    assert rejected(write(tmp_path, base)).field == "model"


# --- digest --------------------------------------------------------------------------


def test_digest_is_stable_across_loads_and_file_locations(tmp_path):
    shipped = builtin_config_dir() / "unitree_h1.yaml"
    copy_path = tmp_path / "elsewhere.yaml"
    shutil.copyfile(shipped, copy_path)

    first = load_robot_config(shipped).digest
    assert load_robot_config(shipped).digest == first
    assert load_robot_config(copy_path).digest == first
    assert len(first) == 64


def test_digest_changes_when_a_limit_changes(tmp_path, base):
    before = load_robot_config(write(tmp_path, base, "before.yaml")).digest
    base["joints"][3]["effort"] = base["joints"][3]["effort"] + 1.0

    after = load_robot_config(write(tmp_path, base, "after.yaml")).digest

    assert after != before


# --- unknown limits (configs generated from foreign datasets) -------------------------


def test_null_limits_are_unknown_and_nothing_violates_them(tmp_path, base):
    joint = base["joints"][0]
    joint["position"] = joint["velocity"] = joint["effort"] = None

    config = load_robot_config(write(tmp_path, base))

    first = config.joints[0]
    assert not first.position_known and not first.velocity_known and not first.effort_known
    assert first.position_min == -math.inf and first.position_max == math.inf
    assert first.velocity_max == math.inf and first.effort_max == math.inf
    assert config.unknown_limits("position") == ("left_hip_pitch_joint",)
    assert config.joints[1].position_known and config.unknown_limits("effort") == ("left_hip_pitch_joint",)


def test_unknown_limits_round_trip_as_null(tmp_path, base):
    base["joints"][0]["position"] = None
    base["joints"][0]["standard"] = None
    config = load_robot_config(write(tmp_path, base))

    again = parse_robot_config(config.to_dict())

    assert config.to_dict()["joints"][0]["position"] is None
    assert config.to_dict()["joints"][0]["standard"] is None
    assert again == replace(config, path="<config>") and again.digest == config.digest


def test_a_null_standard_name_means_none_and_several_joints_may_have_none(tmp_path, base):
    base["joints"][0]["standard"] = None
    base["joints"][1]["standard"] = None

    config = load_robot_config(write(tmp_path, base))

    assert config.standard_names[:2] == ("", "")


def test_a_missing_limit_is_still_refused(tmp_path, base):
    del base["joints"][0]["velocity"]

    assert rejected(write(tmp_path, base)).field == f"{FIRST}.velocity"
