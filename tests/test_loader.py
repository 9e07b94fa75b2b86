"""The trainer's loader: windows, padding, filters, pixels, pickling, PyTorch workers, errors.

Datasets are made by the real processing job (dataset format 2): several
episodes per data segment, so every read goes through an episode's offset.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import zarr

from collectors.drivers.sim import SimFaults
from pipeline.dataset import loader
from pipeline.dataset.index import EpisodeEntry
from pipeline.dataset.loader import EpisodeDataset, LoaderError
from pipeline.dataset.store import Dataset, create_dataset, load_index
from pipeline.errors import DatasetError
from pipeline.process_job import JobOptions, run_process_job
from pipeline.processing.config import OutputConfig, ProcessConfig
from pipeline.raw_builder import RawEpisodeBuilder, simulate_episode
from pipeline.raw_store import RawEpisodeReader

pytestmark = pytest.mark.usefixtures("ray_session")

CAMERAS = ("cameras/head_left", "cameras/head_right")
T0 = 1_800_000_000_000_000_000


@dataclass(frozen=True)
class Built:
    path: Path
    raw_dir: Path
    entries: list[EpisodeEntry]  # accepted episodes, index order

    @property
    def store(self) -> Dataset:
        return Dataset(self.path)


def split_hash(raw_episode_id: str) -> float:
    """Where an episode falls in [0, 1) for the index's train/val split (``index.split_of``)."""
    return int.from_bytes(hashlib.sha256(raw_episode_id.encode()).digest()[:8], "big") / 2**64


def raw_episode_ids(raw: Path) -> list[str]:
    ids = []
    for path in sorted(raw.rglob("*.h5")):
        with RawEpisodeReader(path) as reader:
            ids.append(str(reader.attrs["episode_id"]))
    return ids


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, tiny_robot, ray_session) -> Built:
    """Three episodes: two clean (grade A; tasks wave and point), one with joint spikes (graded lower).

    The validation share is set so that exactly one raw episode (the one whose
    hash is lowest) is in the ``val`` split.
    """
    root = tmp_path_factory.mktemp("loader")
    raw = root / "raw"
    # Episodes 100 s apart: no timestamp is shared between them.
    simulate_episode(raw, tiny_robot, robot_id="tiny-a", seconds=3.0, seed=1, task="wave", t0_ns=T0)
    simulate_episode(raw, tiny_robot, robot_id="tiny-b", seconds=2.0, seed=2, task="point", t0_ns=T0 + 10**11)
    simulate_episode(raw, tiny_robot, robot_id="tiny-c", seconds=2.0, seed=3, task="wave", t0_ns=T0 + 2 * 10**11,
                     faults=SimFaults(spike_prob=0.05))
    lowest, second = sorted(split_hash(i) for i in raw_episode_ids(raw))[:2]
    dataset = root / "ds.zarr"
    create_dataset(dataset, val_fraction=(lowest + second) / 2)
    summary = run_process_job(JobOptions(raw_dir=raw, dataset=dataset))
    assert summary.accepted == 3 and not summary.failed, summary.lines()
    entries = [e for e in load_index(dataset) if e.accepted]
    assert len({e.data_segment for e in entries}) < len(entries), "the fixture needs episodes sharing a segment"
    assert sorted(e.split for e in entries) == ["train", "train", "val"]
    return Built(dataset, raw, entries)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory, tiny_robot, ray_session) -> Built:
    """Four episodes; ``nocam`` recorded no ``head_right`` frame and shares a data segment with a full one.

    Frames are stored resized (to their own size), so episodes of different
    camera sets go into one segment, 16 frames per shard so windows cross shards.
    """
    root = tmp_path_factory.mktemp("mixed")
    raw = root / "raw"
    for n in range(3):
        simulate_episode(raw, tiny_robot, robot_id=f"full-{n}", seconds=2.0, seed=10 + n, task="wave",
                         t0_ns=T0 + n * 10**11)
    keep_frame = RawEpisodeBuilder.frame

    def frame(self: RawEpisodeBuilder, camera: str, *args: object) -> None:
        if camera != "head_right":
            keep_frame(self, camera, *args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(RawEpisodeBuilder, "frame", frame)
        simulate_episode(raw, tiny_robot, robot_id="nocam", seconds=2.0, seed=13, task="wave", t0_ns=T0 + 3 * 10**11)
    dataset = root / "ds.zarr"
    config = ProcessConfig(output=OutputConfig(resize=(48, 64), frames_per_shard=16))
    summary = run_process_job(JobOptions(raw_dir=raw, dataset=dataset, config=config))
    assert summary.accepted == 4 and not summary.failed, summary.lines()
    entries = [e for e in load_index(dataset) if e.accepted]
    nocam = next(e for e in entries if e.robot_id == "nocam")
    assert nocam.cameras == ["head_left"] and nocam.offset > 0
    assert any(e.data_segment == nocam.data_segment and "head_right" in e.cameras for e in entries)
    return Built(dataset, raw, entries)


def entry_of(built: Built, robot_id: str) -> EpisodeEntry:
    return next(e for e in built.entries if e.robot_id == robot_id)


def first_index_of(ds: EpisodeDataset, robot_id: str) -> int:
    episode = next(i for i, e in enumerate(ds.episodes) if e.robot_id == robot_id)
    return sum(e.length for e in ds.episodes[:episode])


def assert_same_sample(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert np.array_equal(np.asarray(value), np.asarray(b[key])), key


def test_len_is_the_number_of_steps_of_the_selected_episodes(built: Built) -> None:
    ds = EpisodeDataset(built.path)
    assert len(ds) == sum(e.length for e in built.entries)
    only_b = EpisodeDataset(built.path, robots="tiny-b")
    assert len(only_b) == entry_of(built, "tiny-b").length


def test_window_at_episode_start_repeats_the_first_step_and_flags_it(built: Built) -> None:
    ds = EpisodeDataset(built.path, keys=("state/position", "action/position", "cameras/head_left"), history=3,
                        horizon=4)
    start = first_index_of(ds, "tiny-b")
    sample = ds[start]
    entry = entry_of(built, "tiny-b")
    state = built.store.numeric(entry, "state/position")
    assert sample["step"] == 0 and ds.episodes[int(sample["episode_index"])].robot_id == "tiny-b"
    assert np.array_equal(sample["state/position"], state[[0, 0, 0]])
    assert sample["state/position_is_pad"].tolist() == [True, True, False]
    assert np.array_equal(sample["action/position"], built.store.numeric(entry, "action/position")[0:4])
    assert not sample["action/position_is_pad"].any()
    assert sample["cameras/head_left_is_pad"].tolist() == [True, True, False]
    assert np.array_equal(sample["cameras/head_left"][0], sample["cameras/head_left"][2])


def test_window_at_episode_end_repeats_the_last_step_and_flags_it(built: Built) -> None:
    ds = EpisodeDataset(built.path, keys=("state/position", "action/position"), history=2, horizon=4)
    entry = entry_of(built, "tiny-b")
    last = first_index_of(ds, "tiny-b") + entry.length - 2  # t = T-2: steps T-2, T-1, pad, pad
    sample = ds[last]
    actions = built.store.numeric(entry, "action/position")
    assert sample["step"] == entry.length - 2
    assert np.array_equal(sample["action/position"], actions[[-2, -1, -1, -1]])
    assert sample["action/position_is_pad"].tolist() == [False, False, True, True]
    assert not sample["state/position_is_pad"].any()


def test_windows_never_mix_episodes(built: Built) -> None:
    offsets = [k / 30 for k in range(-5, 6)]  # a window wider than the padding at both ends
    ds = EpisodeDataset(built.path, keys=("timestamps_ns",), delta_timestamps={"timestamps_ns": offsets})
    assert len({e.data_segment for e in ds.episodes}) < len(ds.episodes)  # neighbours in one segment
    own = [set(built.store.numeric(e, "timestamps_ns").tolist()) for e in ds.episodes]
    for i in range(len(ds)):
        sample = ds[i]
        episode, t = ds.locate(i)
        window = sample["timestamps_ns"]
        assert int(sample["episode_index"]) == episode and int(sample["step"]) == t
        assert np.all(np.diff(window) >= 0)  # monotonic: padding repeats, never jumps
        assert set(window.tolist()) <= own[episode]  # episodes' clocks are disjoint here (fixture)


def test_delta_timestamps_equal_the_same_history_and_horizon(built: Built) -> None:
    rate = built.entries[0].rate_hz
    keys = ("state/position", "action/position", "cameras/head_right")
    by_steps = EpisodeDataset(built.path, keys=keys, history=3, horizon=5)
    by_time = EpisodeDataset(
        built.path,
        keys=keys,
        delta_timestamps={
            "state/position": [-2 / rate, -1 / rate, 0.0],
            "cameras/head_right": [-2 / rate, -1 / rate, 0.0],
            "action/position": [k / rate for k in range(5)],
        },
    )
    assert len(by_steps) == len(by_time)
    for i in (0, 1, 2, len(by_steps) // 2, len(by_steps) - 3, len(by_steps) - 1):
        assert_same_sample(by_steps[i], by_time[i])


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"min_grade": "A"}, lambda e: e.grade == "A"),
        ({"min_grade": "F"}, lambda e: True),
        ({"robots": ["tiny-a", "tiny-c"]}, lambda e: e.robot_id in ("tiny-a", "tiny-c")),
        ({"tasks": "wave"}, lambda e: e.task == "wave"),
        ({"tasks": "wave", "min_grade": "A"}, lambda e: e.task == "wave" and e.grade == "A"),
        ({"models": "tiny_humanoid"}, lambda e: True),
    ],
    ids=["grade-A", "grade-F", "robots", "task", "task-and-grade", "model"],
)
def test_filters_select_exactly_the_matching_episodes(built: Built, filters: dict, expected) -> None:
    assert {e.grade for e in built.entries} != {"A"}, "the fixture needs an episode graded below A"
    ds = EpisodeDataset(built.path, **filters)
    assert sorted(e.key for e in ds.episodes) == sorted(e.key for e in built.entries if expected(e))


def test_split_filter_selects_the_split_the_index_records(built: Built) -> None:
    val = EpisodeDataset(built.path, split="val")
    train = EpisodeDataset(built.path, split="train")
    assert [e.key for e in val.episodes] == [e.key for e in built.entries if e.split == "val"]
    assert [e.key for e in train.episodes] == [e.key for e in built.entries if e.split == "train"]
    assert len(val) + len(train) == len(EpisodeDataset(built.path))
    with pytest.raises(LoaderError, match="split='test' is not a split"):
        EpisodeDataset(built.path, split="test")


def test_time_filters_select_episodes_by_their_first_step(built: Built) -> None:
    first, second, third = sorted(built.entries, key=lambda e: e.start_ns)
    between_1_2 = (first.start_ns + second.start_ns) // 2
    between_2_3 = (second.start_ns + third.start_ns) // 2

    def keys(**filters: int) -> list[str]:
        return sorted(e.key for e in EpisodeDataset(built.path, **filters).episodes)

    assert keys(start_after_ns=between_1_2) == sorted([second.key, third.key])
    assert keys(start_before_ns=between_2_3) == sorted([first.key, second.key])
    assert keys(start_after_ns=between_1_2, start_before_ns=between_2_3) == [second.key]
    assert keys(start_after_ns=second.start_ns, start_before_ns=second.start_ns + 1) == [second.key]  # [after, before)
    with pytest.raises(LoaderError, match="no episodes match the filters"):
        EpisodeDataset(built.path, start_after_ns=third.start_ns + 1)
    with pytest.raises(LoaderError, match="start_after_ns='soon' must be an integer time in ns"):
        EpisodeDataset(built.path, start_after_ns="soon")  # type: ignore[arg-type]


def test_memory_holds_the_selected_episodes_rows_only(built: Built) -> None:
    segment = next(s for s in {e.data_segment for e in built.entries}
                   if sum(e.data_segment == s for e in built.entries) > 1)
    neighbours = [e for e in built.entries if e.data_segment == segment]
    ds = EpisodeDataset(built.path, robots=neighbours[-1].robot_id, keys=("state/position",))
    assert ds.episodes[0].offset > 0  # not the segment's first episode
    ds[0]
    assert list(ds._cache) == [0]
    held = ds._cache[0]
    assert held["state/position"].shape[0] == held["timestamps_ns"].shape[0] == neighbours[-1].length
    assert np.array_equal(held["state/position"], built.store.numeric(neighbours[-1], "state/position"))


def test_every_window_equals_the_episodes_rows_in_its_segment(built: Built) -> None:
    ds = EpisodeDataset(built.path, keys=("state/position", "action/position", "cameras/head_left"), history=2,
                        horizon=3)
    for i in range(0, len(ds), 7):
        episode, t = ds.locate(i)
        entry = ds.episodes[episode]
        sample = ds[i]
        before = np.clip([t - 1, t], 0, entry.length - 1)
        after = np.clip([t, t + 1, t + 2], 0, entry.length - 1)
        assert np.array_equal(sample["state/position"], built.store.numeric(entry, "state/position")[before])
        assert np.array_equal(sample["action/position"], built.store.numeric(entry, "action/position")[after])
        assert np.array_equal(sample["cameras/head_left"], built.store.frames(entry, "head_left", before))


def test_an_episode_without_a_camera_limits_the_default_keys(mixed: Built) -> None:
    ds = EpisodeDataset(mixed.path)
    assert [k for k in ds.keys if k.startswith("cameras/")] == ["cameras/head_left"]
    everything = EpisodeDataset(mixed.path, robots=[e.robot_id for e in mixed.entries if e.robot_id != "nocam"])
    assert [k for k in everything.keys if k.startswith("cameras/")] == list(CAMERAS)


def test_asking_for_a_camera_an_episode_lacks_names_the_episode(mixed: Built) -> None:
    nocam = entry_of(mixed, "nocam")
    with pytest.raises(LoaderError, match=rf"episode '{nocam.key}', key 'cameras/head_right'.*lacks the key"):
        EpisodeDataset(mixed.path, keys=CAMERAS)


def test_frames_around_an_episode_without_a_camera_are_its_neighbours_own(mixed: Built) -> None:
    nocam = entry_of(mixed, "nocam")
    neighbour = next(e for e in mixed.entries if e.data_segment == nocam.data_segment and e.key != nocam.key)
    left = EpisodeDataset(mixed.path, robots=[nocam.robot_id, neighbour.robot_id], keys=("cameras/head_left",),
                          history=3)
    both = EpisodeDataset(mixed.path, robots=neighbour.robot_id, keys=CAMERAS, history=3)
    for ds in (left, both):
        for i in range(len(ds)):  # 16 frames per shard: windows cross shards and segment offsets
            episode, t = ds.locate(i)
            entry = ds.episodes[episode]
            steps = np.clip([t - 2, t - 1, t], 0, entry.length - 1)
            sample = ds[i]
            for key in ds.keys:
                expected = mixed.store.frames(entry, key.removeprefix("cameras/"), steps)
                assert np.array_equal(sample[key], expected), (entry.key, key, t)
                assert sample[key].any()  # real frames, not the empty slots of nocam's rows


def test_camera_sample_is_the_recorded_jpeg_decoded(built: Built) -> None:
    ds = EpisodeDataset(built.path, keys=CAMERAS, history=2)
    entry = entry_of(built, "tiny-a")
    index = first_index_of(ds, "tiny-a") + 37
    sample = ds[index]
    raw_file = next(built.raw_dir.rglob(f"{entry.raw_episode_id}.h5"))
    with RawEpisodeReader(raw_file) as raw:
        for key in CAMERAS:
            recorded = set(raw.frames(key.removeprefix("cameras/")))
            for position, t in enumerate((36, 37)):
                (stored,) = built.store.jpeg_bytes(entry, key.removeprefix("cameras/"), [t])
                assert stored in recorded  # the bytes the robot sent, not a re-encoding
                bgr = cv2.imdecode(np.frombuffer(stored, np.uint8), cv2.IMREAD_COLOR)
                assert np.array_equal(sample[key][position], cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


def test_frames_read_through_zarr_equal_the_direct_shard_reads(built: Built, monkeypatch: pytest.MonkeyPatch) -> None:
    direct = EpisodeDataset(built.path, keys=CAMERAS, history=3, image_size=(24, 32))
    picks = (0, 1, 88, 89, 90, len(direct) - 1)
    expected = [direct[i] for i in picks]
    monkeypatch.setattr(loader._ShardFiles, "accepts", staticmethod(lambda array: False))  # stores other than local
    through_zarr = EpisodeDataset(built.path, keys=CAMERAS, history=3, image_size=(24, 32))
    for i, sample in zip(picks, expected, strict=True):
        assert_same_sample(through_zarr[i], sample)


def test_images_are_resized_to_image_size(built: Built) -> None:
    ds = EpisodeDataset(built.path, keys=CAMERAS, history=2, image_size=(24, 40))
    full = EpisodeDataset(built.path, keys=CAMERAS, history=2)
    sample = ds[50]
    assert sample["cameras/head_left"].shape == (2, 24, 40, 3) and sample["cameras/head_left"].dtype == np.uint8
    expected = cv2.resize(full[50]["cameras/head_left"][1], (40, 24), interpolation=cv2.INTER_AREA)
    assert np.array_equal(sample["cameras/head_left"][1], expected)


def test_samples_have_the_documented_dtypes_and_shapes(built: Built) -> None:
    sample = EpisodeDataset(built.path, history=2, horizon=16)[10]
    assert sample["state/position"].shape == (2, 6) and sample["state/position"].dtype == np.float32
    assert sample["action/position"].shape == (16, 6) and sample["action/position"].dtype == np.float32
    assert sample["cameras/head_left"].shape == (2, 48, 64, 3) and sample["cameras/head_left"].dtype == np.uint8
    assert sample["action/position_is_pad"].dtype == np.bool_
    assert {"episode_index", "step", "timestamp_ns"} <= sample.keys()


def test_pickled_dataset_carries_no_cache_and_gives_the_same_samples(built: Built) -> None:
    ds = EpisodeDataset(built.path, image_size=(32, 32))
    before = [ds[i] for i in (0, 77, len(ds) - 1)]  # fills caches, opens zarr arrays
    blob = pickle.dumps(ds)
    assert b"zarr.core" not in blob and b"zarr.storage" not in blob  # no store, array or handle travels
    again = pickle.loads(blob)
    assert again._cache == {}  # reopened lazily in the receiving process
    for i, sample in zip((0, 77, len(ds) - 1), before, strict=True):
        assert_same_sample(again[i], sample)


_INHERITED: list[EpisodeDataset] = []


def _samples_in_forked_child(picks: list[int]) -> list[dict]:
    return [_INHERITED[0][i] for i in picks]


def test_forked_worker_reads_what_the_parent_reads(built: Built) -> None:
    ds = EpisodeDataset(built.path, image_size=(32, 32))
    picks = [0, 77, len(ds) - 1]
    expected = [ds[i] for i in picks[:1]]  # the parent holds caches and zarr handles of one segment only
    _INHERITED[:] = [ds]
    try:
        with multiprocessing.get_context("fork").Pool(1) as pool:
            forked = pool.apply(_samples_in_forked_child, (picks,))
    finally:
        _INHERITED.clear()
    expected += [ds[i] for i in picks[1:]]
    for a, b in zip(forked, expected, strict=True):
        assert_same_sample(a, b)


def test_stats_are_the_selected_models_normalisation_stats(built: Built) -> None:
    stats = EpisodeDataset(built.path).stats
    assert list(stats) == ["tiny_humanoid"]
    position = stats["tiny_humanoid"]["state/position"]
    assert len(position["mean"]) == 6 and len(position["std"]) == 6
    assert position["count"] == sum(e.length for e in built.entries)


def test_unknown_key_is_refused_with_the_available_keys(built: Built) -> None:
    with pytest.raises(LoaderError, match=r"key 'cameras/chest'.*available keys: \[.*'cameras/head_left'") as err:
        EpisodeDataset(built.path, keys=("state/position", "cameras/chest"))
    assert isinstance(err.value, DatasetError) and str(built.path) in str(err.value)


def test_bad_grade_letter_is_refused(built: Built) -> None:
    with pytest.raises(LoaderError, match="min_grade='E' is not a grade; use one of A, B, C, D, F"):
        EpisodeDataset(built.path, min_grade="E")


def test_filters_matching_nothing_are_refused_with_what_there_is(built: Built) -> None:
    with pytest.raises(LoaderError, match=r"no episodes match the filters.*robots \['tiny-a', 'tiny-b', 'tiny-c'\]"):
        EpisodeDataset(built.path, robots="tiny-z")


def test_delta_timestamps_off_the_step_grid_are_refused(built: Built) -> None:
    with pytest.raises(LoaderError, match=r"key 'action/position'.*offset 0\.05 s is .* ms from the nearest step"):
        EpisodeDataset(built.path, delta_timestamps={"action/position": [0.0, 0.05]})


def test_a_folder_that_is_not_a_refinery_dataset_is_refused(tmp_path: Path) -> None:
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w")
    with pytest.raises(LoaderError, match="not a Refinery dataset"):
        EpisodeDataset(tmp_path / "other.zarr")
    with pytest.raises(LoaderError, match="not a Refinery dataset"):
        EpisodeDataset(tmp_path / "missing.zarr")


def test_a_dataset_of_format_version_1_is_refused_with_the_upgrade_command(tmp_path: Path) -> None:
    old = zarr.open_group(str(tmp_path / "old.zarr"), mode="w")
    old.attrs.update({"format": "refinery-dataset", "format_version": 1})
    with pytest.raises(LoaderError, match="format version 1.*refinery upgrade"):
        EpisodeDataset(tmp_path / "old.zarr")


def test_out_of_range_index_raises_index_error(built: Built) -> None:
    ds = EpisodeDataset(built.path, keys=("state/position",))
    assert_same_sample(ds[-1], ds[len(ds) - 1])
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_torch_dataloader_with_workers_returns_the_same_samples(built: Built) -> None:
    torch = pytest.importorskip("torch")
    from pipeline.dataset.torch_adapter import to_torch

    ds = to_torch(EpisodeDataset(built.path, image_size=(32, 32)))
    picks = torch.utils.data.Subset(ds, [0, 1, 89, 90, 91, len(ds) - 2, len(ds) - 1, 40])

    def batches(workers: int) -> list[dict]:
        loader = torch.utils.data.DataLoader(picks, batch_size=3, num_workers=workers,
                                             multiprocessing_context="spawn" if workers else None)
        return list(loader)

    in_process, with_workers = batches(0), batches(2)
    assert len(in_process) == len(with_workers) == 3
    for a, b in zip(in_process, with_workers, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key
    assert in_process[0]["cameras/head_left"].dtype == torch.uint8
    assert in_process[0]["cameras/head_left"].shape == (3, 2, 32, 32, 3)


def test_torch_float_images_are_channels_first_in_unit_range(built: Built) -> None:
    torch = pytest.importorskip("torch")
    from pipeline.dataset.torch_adapter import TorchEpisodeDataset

    ds = TorchEpisodeDataset(built.path, images="float", keys=CAMERAS)
    image = ds[5]["cameras/head_left"]
    assert image.dtype == torch.float32 and image.shape == (2, 3, 48, 64)
    raw = EpisodeDataset(built.path, keys=CAMERAS)[5]["cameras/head_left"]
    assert torch.allclose(image, torch.from_numpy(raw).permute(0, 3, 1, 2).float() / 255)


def test_torch_adapter_without_torch_says_how_to_install_it(built: Built, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.dataset import torch_adapter

    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    monkeypatch.setattr(torch_adapter, "_CLASS", None)
    with pytest.raises(ImportError, match=r"pip install 'teleop-refinery\[torch\]'"):
        torch_adapter.to_torch(EpisodeDataset(built.path))
