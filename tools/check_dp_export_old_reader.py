"""Check the Diffusion Policy export against an old reader environment.

    python -m tools.check_dp_export_old_reader [--venv DIR] [--keep]

DESIGN ("Diffusion Policy export") asks for a test against the reader
environment Diffusion Policy and its descendants (UMI) actually run: zarr 2
with numcodecs < 0.16 and an imagecodecs of that time, not only against
zarr 3. This script

1. builds that environment in a separate venv (``--venv`` reuses one):
   ``zarr==2.16.*``, ``numcodecs==0.11.*`` (UMI's conda pins zarr 2.16 and
   numcodecs 0.11), ``numpy<2`` and ``imagecodecs==2023.9.18`` (UMI's pin; its
   numcodecs ``Jpeg`` predates several of today's settings keys);
2. in this environment (zarr 3), simulates three episodes of the test robot,
   processes them into a dataset (format version 2: one data segment of the
   three, camera shards of 32 frames) on an embedded Ray, and exports it
   three ways: a folder with JPEG frames, a ``.zarr.zip`` with JPEG frames,
   and a folder with Blosc frames of the first and last episode only (a
   selection with a hole in the segment); it writes what each array must
   hold (numeric values, every frame's JPEG bytes and OpenCV's decoded
   pixels, read episode by episode through the dataset's store) to a .npz;
3. in the old environment, reads every export the way Diffusion Policy's
   ``ReplayBuffer.copy_from_path`` does, with both of its backends: ``zarr.open``
   (or ``zarr.ZipStore``), ``zarr.group(store)``, ``meta/episode_ends`` and
   every ``data/*`` array read whole (numpy backend), and
   ``zarr.copy_store`` into a ``zarr.MemoryStore`` when chunks and compressor
   match (its zarr backend), with the JPEG codec registered as DP registers
   it (below); it then checks the layout rules ReplayBuffer asserts and
   compares every value.

The JPEG codec: DP does not use imagecodecs' numcodecs module; it ships a copy
of it (``diffusion_policy/codecs/imagecodecs_numcodecs.py``, imagecodecs
2022.9.26) whose ``Jpeg`` squeezes zarr's ``(1, H, W, 3)`` chunk buffer to
``(H, W, 3)`` before calling ``imagecodecs.jpeg_decode``. The reader here
registers a codec with the same constructor settings and the same decode
steps. imagecodecs 2023.9.18's own ``imagecodecs.numcodecs.Jpeg`` crashes the
interpreter (segmentation fault in ``jpeg_decode``) when zarr 2 hands it that
4-D buffer, for any one-frame-per-chunk array, ours or DP's own: a reader
that registers imagecodecs' codecs instead of DP's needs a newer imagecodecs.

Exits 0 and prints ``N passed, 0 failed`` when every check passes. Needs PyPI
(pip) for step 1; about 20 s on 2 cores with a fresh venv and pip's cache warm.
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

OLD_READER_REQUIREMENTS = ["zarr==2.16.*", "numcodecs==0.11.*", "numpy<2", "imagecodecs==2023.9.18"]

# Runs inside the old environment (zarr 2): the reading steps of Diffusion
# Policy's ReplayBuffer.copy_from_path / copy_from_store, then comparisons.
OLD_READER = r'''
import json
import sys

import numpy as np
import zarr
import numcodecs
import numcodecs.abc
import imagecodecs
import imagecodecs.numcodecs


def squeeze_frames(x):
    """(1, H, W, C) -> (H, W, C); (N, H, W, C) stays: what DP's protective_squeeze does."""
    shape = x.shape[-3:]
    if x.ndim > 3 and int(np.prod(x.shape[:-3])) > 1:
        shape = (-1, *shape)
    return x.reshape(shape)


class DiffusionPolicyJpeg(numcodecs.abc.Codec):
    """imagecodecs_jpeg as Diffusion Policy registers it.

    DP's diffusion_policy/codecs/imagecodecs_numcodecs.py is its own copy of
    imagecodecs 2022.9.26's numcodecs module; its Jpeg takes exactly these
    settings (a key it does not know is a TypeError, as there) and squeezes
    zarr's (1, H, W, 3) chunk buffer before calling imagecodecs.
    """

    codec_id = "imagecodecs_jpeg"

    def __init__(self, bitspersample=None, tables=None, header=None, colorspace_data=None,
                 colorspace_jpeg=None, level=None, subsampling=None, optimize=None, smoothing=None):
        self.bitspersample = bitspersample
        self.tables = tables
        self.header = header
        self.colorspace_data = colorspace_data
        self.colorspace_jpeg = colorspace_jpeg
        self.level = level
        self.subsampling = subsampling
        self.optimize = optimize
        self.smoothing = smoothing

    def encode(self, buf):
        return imagecodecs.jpeg_encode(squeeze_frames(np.asarray(buf)), level=self.level)

    def decode(self, buf, out=None):
        shape = None if out is None else out.shape
        image = imagecodecs.jpeg_decode(
            buf, bitspersample=self.bitspersample, tables=self.tables, header=self.header,
            colorspace=self.colorspace_jpeg, outcolorspace=self.colorspace_data,
            out=None if out is None else squeeze_frames(out),
        )
        return image if shape is None else image.reshape(shape)


# DP's register_codecs(): its classes take the imagecodecs ids (registered
# after imagecodecs' own, they win).
imagecodecs.numcodecs.register_codecs()
numcodecs.register_codec(DiffusionPolicyJpeg)

path, expected_path, image_codec = sys.argv[1], sys.argv[2], sys.argv[3]
expected = np.load(expected_path)
names = json.loads(str(expected["names"]))
passed, failed = 0, []


def check(ok, what):
    global passed
    if ok:
        passed += 1
    else:
        failed.append(what)


if path.endswith(".zip"):
    src_store = zarr.ZipStore(path, mode="r")
else:
    src_store = zarr.open(path, "r").store  # copy_from_path
src_root = zarr.group(src_store)  # copy_from_store
check(sorted(src_root.group_keys()) == ["data", "meta"] and not list(src_root.array_keys()),
      f"root holds groups data and meta only: {list(src_root.keys())}")
check(not list(src_root["data"].group_keys()), "data/ has no subgroups")
check(list(src_root["meta"].array_keys()) == ["episode_ends"] and not list(src_root["meta"].group_keys()),
      f"meta/ holds episode_ends only: {list(src_root['meta'].keys())}")
ends = src_root["meta"]["episode_ends"][:]
check(ends.dtype == np.int64 and np.array_equal(ends, expected["episode_ends"]), f"episode_ends {ends}")
check(sorted(src_root["data"].array_keys()) == sorted(names.values()), f"data keys {list(src_root['data'].keys())}")


def compare(root, backend):
    for key, name in names.items():
        array = root["data"][name]
        # ReplayBuffer.__init__: every data array spans exactly episode_ends[-1] steps.
        check(array[: ends[-1]].shape[0] == ends[-1] == array.shape[0], f"{backend} {name}: shape {array.shape}")
        check(array.chunks[1:] == array.shape[1:], f"{backend} {name}: chunks {array.chunks} split more than time")
        values = array[:]
        if key.startswith("cameras/"):
            check(array.chunks[0] == 1 and values.dtype == np.uint8, f"{backend} {name}: one uint8 frame per chunk")
            want = expected[f"pixels:{key}"]
            diff = int(np.abs(values.astype(np.int16) - want.astype(np.int16)).max())
            # Same JPEG bytes, both decoders libjpeg-turbo: equal; allow one
            # level for a decoder built with another IDCT.
            check(values.shape == want.shape and diff <= 1, f"{backend} {name}: pixels differ by {diff}")
        else:
            want = expected[f"values:{key}"]
            check(values.dtype == want.dtype and np.array_equal(values, want), f"{backend} {name}: values differ")


compare(src_root, "numpy backend")

# zarr backend: copy_store without recompression where chunks and compressor match.
store = zarr.MemoryStore()
root = zarr.group(store=store)
zarr.copy_store(source=src_store, dest=store, source_path="/meta", dest_path="/meta", if_exists="replace")
root.create_group("data", overwrite=True)
for name in names.values():
    value = src_root["data"][name]
    check(value.compressor == numcodecs.get_codec(value.compressor.get_config()) if value.compressor else True,
          f"{name}: compressor round-trips through its config")
    zarr.copy_store(source=src_store, dest=store, source_path="/data/" + name, dest_path="/data/" + name,
                    if_exists="replace")
compare(root, "zarr backend")

if image_codec == "jpeg":
    for key, name in names.items():
        if not key.startswith("cameras/"):
            continue
        config = src_root["data"][name].compressor.get_config()
        check(config["id"] == "imagecodecs_jpeg", f"{name}: compressor {config}")
        offsets = expected[f"offsets:{key}"]
        blob = expected[f"jpeg:{key}"].tobytes()
        same = all(
            src_store[f"data/{name}/{i}.0.0.0"] == blob[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)
        )
        check(same, f"{name}: stored chunks are not the dataset's JPEG bytes")

if hasattr(src_store, "close"):
    src_store.close()
versions = f"zarr {zarr.__version__}, numcodecs {numcodecs.__version__}, imagecodecs {imagecodecs.__version__}"
for what in failed:
    print(f"FAILED {path}: {what}")
print(f"{path} ({image_codec}) read by {versions}: {passed} checks passed, {len(failed)} failed")
sys.exit(1 if failed else 0)
'''


def make_old_env(where: Path) -> Path:
    python = where / "bin" / "python"
    if not python.exists():
        venv.create(where, with_pip=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *OLD_READER_REQUIREMENTS],
        check=True,
    )
    return python


def make_exports(work: Path) -> list[tuple[Path, Path, str]]:
    """A small processed dataset, its exports and the expected contents of each."""
    import json

    import numpy as np

    from pipeline.dataset.jpeg_codec import decode_jpeg_chunk
    from pipeline.dataset.store import Dataset
    from pipeline.interop.dp_export import export_diffusion_policy
    from pipeline.process_job import JobOptions, run_process_job
    from pipeline.processing.config import ProcessConfig
    from pipeline.raw_builder import simulate_episode
    from pipeline.robot_config import load_robot_config

    config = load_robot_config(Path(__file__).resolve().parents[1] / "tests" / "data" / "robots" / "tiny_humanoid.yaml")
    robots = [f"tiny-{i}" for i in range(3)]
    for i, (robot, task) in enumerate(zip(robots, ["wave", "point", "wave"])):
        simulate_episode(work / "raw", config, robot_id=robot, seconds=2.0, seed=i + 1, task=task)
    dataset = work / "dataset.zarr"
    # One worker: the three episodes share one data segment, and small camera
    # shards make the export read across shard boundaries.
    process = ProcessConfig()
    process = process.replace(output=dataclasses.replace(process.output, frames_per_shard=32))
    run_process_job(JobOptions(raw_dir=work / "raw", dataset=dataset, config=process, num_cpus=1))
    source = Dataset(dataset)
    by_key = {e.key: e for e in source.index.entries()}
    segments = {e.data_segment for e in by_key.values()}
    print(f"dataset: {len(by_key)} episodes in {len(segments)} data segment(s)")

    runs = []
    exports = [
        (work / "dp.zarr", "jpeg", None),
        (work / "dp.zarr.zip", "jpeg", None),
        # Leaves the middle episode of the segment out: the rows around a hole.
        (work / "dp-blosc.zarr", "blosc", [robots[0], robots[2]]),
    ]
    for out, codec, chosen in exports:
        summary = export_diffusion_policy(dataset, out, image_codec=codec, robots=chosen)
        entries = [by_key[key] for key in summary.episode_keys]
        expected: dict[str, np.ndarray] = {
            "names": np.array(json.dumps(summary.keys)),
            "episode_ends": np.cumsum([e.length for e in entries]).astype(np.int64),
        }
        for key in summary.keys:
            if key.startswith("cameras/"):
                camera = key.removeprefix("cameras/")
                jpegs = [j for e in entries for j in source.jpeg_bytes(e, camera, range(e.length))]
                expected[f"jpeg:{key}"] = np.frombuffer(b"".join(jpegs), dtype=np.uint8)
                expected[f"offsets:{key}"] = np.concatenate([[0], np.cumsum([len(j) for j in jpegs])]).astype(np.int64)
                shape = (*source.frame_size(entries[0], camera), 3)
                expected[f"pixels:{key}"] = np.stack([decode_jpeg_chunk(j, shape) for j in jpegs])
            elif key == "timestamps_ns":
                values = np.concatenate([source.numeric(e, key) for e in entries])
                expected[f"values:{key}"] = values.astype(np.float64) / 1e9
            else:
                expected[f"values:{key}"] = np.concatenate([source.numeric(e, key) for e in entries]).astype(np.float32)
        np.savez(out.with_name(out.name + ".expected.npz"), **expected)
        runs.append((out, out.with_name(out.name + ".expected.npz"), codec))
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", type=Path, help="old-reader venv to create or reuse (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder and print its path")
    args = parser.parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dp-old-reader-") as tmp:
        work = Path(tmp)
        python = make_old_env(args.venv or work / "venv")
        ready = time.monotonic() - started
        print(f"old reader environment ready ({ready:.0f} s): {', '.join(OLD_READER_REQUIREMENTS)}")
        runs = make_exports(work / "data")
        reader = work / "old_reader.py"
        reader.write_text(OLD_READER)
        failures = 0
        for out, expected, codec in runs:
            done = subprocess.run([str(python), str(reader), str(out), str(expected), codec], check=False)
            failures += done.returncode != 0
        if args.keep:
            kept = Path(tempfile.mkdtemp(prefix="dp-old-reader-kept-"))
            subprocess.run(["cp", "-a", str(work / "data"), str(kept)], check=True)
            print(f"kept exports in {kept}")
    print(f"{len(runs) - failures} passed, {failures} failed")
    print(f"({time.monotonic() - started:.0f} s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
