"""ETL: the synthetic archive's format, safe extraction, transform consistency, resumable upload."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import pickle
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
from PIL import Image

from scones.etl import __main__ as etl_cli
from scones.etl import archive, synthetic, transform

BIKES = ("bicycle", "motorcycle")


@pytest.fixture(scope="module")
def small_archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A 600/300-row synthetic archive and its recorded MD5."""
    path = tmp_path_factory.mktemp("archive") / synthetic.ARCHIVE_NAME
    md5 = synthetic.write_archive(path, seed=3, rows_train=600, rows_test=300)
    return path, md5


def _members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path, "r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def test_synthetic_archive_has_the_official_layout(small_archive: tuple[Path, str]) -> None:
    path, md5 = small_archive
    assert archive.file_md5(path) == md5 == synthetic.md5_path(path).read_text().strip()
    with tarfile.open(path, "r:gz") as tar:
        assert tar.getnames() == ["cifar-100-python"] + [
            f"cifar-100-python/{name}" for name in ("train", "test", "meta")
        ]
    members = _members(path)
    for split, rows in (("train", 600), ("test", 300)):
        payload = members[f"cifar-100-python/{split}"]
        # Python 2 cPickle style: protocol 2, byte strings, numpy.core reconstruction.
        assert payload.startswith(b"\x80\x02")
        assert b"cnumpy.core.multiarray\n_reconstruct\n" in payload
        assert b"_codecs" not in payload
        batch = pickle.loads(payload, encoding="bytes")  # our own output: trusted here
        assert set(batch) == {
            b"data",
            b"fine_labels",
            b"coarse_labels",
            b"filenames",
            b"batch_label",
        }
        assert batch[b"data"].dtype == np.uint8 and batch[b"data"].shape == (rows, 3072)
        assert all(type(v) is int and 0 <= v < 100 for v in batch[b"fine_labels"])
        assert [synthetic.FINE_TO_COARSE[v] for v in batch[b"fine_labels"]] == batch[
            b"coarse_labels"
        ]
        assert all(isinstance(f, bytes) and f.endswith(b".png") for f in batch[b"filenames"])
        assert len(set(batch[b"filenames"])) == rows
        assert isinstance(batch[b"batch_label"], bytes)
        assert set(pickle.loads(payload, encoding="latin1")) == {
            "data",
            "fine_labels",
            "coarse_labels",
            "filenames",
            "batch_label",
        }
    meta = pickle.loads(members["cifar-100-python/meta"], encoding="bytes")
    fine = [name.decode() for name in meta[b"fine_label_names"]]
    coarse = [name.decode() for name in meta[b"coarse_label_names"]]
    assert len(fine) == 100 and len(coarse) == 20 and fine == sorted(fine)
    assert fine.index("bicycle") == 8 and fine.index("motorcycle") == 48
    assert coarse[18] == "vehicles_1" and "large_man-made_outdoor_things" in coarse


def test_generator_is_deterministic_and_class_subsets_are_exact() -> None:
    first = synthetic.generate_split(5, "test", 400, workers=1)
    again = synthetic.generate_split(5, "test", 400, workers=2)
    other = synthetic.generate_split(6, "test", 400, workers=1)
    assert np.array_equal(first[b"data"], again[b"data"])
    assert first[b"filenames"] == again[b"filenames"]
    assert not np.array_equal(first[b"data"], other[b"data"])
    subset = synthetic.generate_split(5, "test", 400, only_classes=BIKES)
    keep = np.isin(first[b"fine_labels"], [8, 48])
    assert np.array_equal(first[b"data"][keep], subset[b"data"])
    assert [f for f, k in zip(first[b"filenames"], keep, strict=True) if k] == subset[b"filenames"]


def test_classes_look_different_but_images_vary() -> None:
    batch = synthetic.generate_split(0, "train", 2000, only_classes=("bicycle", "bus", "apple"))
    images = batch[b"data"].reshape(-1, 3, 32, 32).astype(np.float64)
    labels = np.array(batch[b"fine_labels"])
    means = {label: images[labels == label].mean(axis=0) for label in set(labels)}
    within = np.mean([np.abs(images[labels == 8] - means[8]).mean()])
    between = np.abs(means[8] - means[13]).mean()
    assert within > 10, "images of one class must vary (jitter, noise, backgrounds)"
    assert between > 2, "classes must differ on average"
    assert len({img.tobytes() for img in batch[b"data"]}) == len(labels)


def _run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = etl_cli.main([*args, "--no-progress"])
    out, err = capsys.readouterr()
    return rc, out, err


def _bucket_objects(bucket: str, prefix: str) -> dict[str, bytes]:
    s3 = boto3.client("s3")
    keys = [
        obj["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for obj in page.get("Contents", [])
    ]
    return {key: s3.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys}


def test_etl_round_trip_local_files_and_s3(
    local_aws: Any,
    small_archive: tuple[Path, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path, md5 = small_archive
    bucket, prefix, work = "scones-etl-test", "cifar/v1", tmp_path / "work"
    args = [
        "--source",
        str(path),
        "--md5",
        md5,
        "--bucket",
        bucket,
        "--prefix",
        prefix,
        "--work-dir",
        str(work),
    ]
    rc, out, err = _run_cli(args, capsys)
    assert rc == 0, err

    dataset = archive.read_archive(path, md5)
    out_dir = work / "dataset"
    for split_name in ("train", "test"):
        split = getattr(dataset, split_name)
        rows = [
            json.loads(line)
            for line in (out_dir / split_name / "manifest.jsonl").read_text().splitlines()
        ]
        expected_rows = np.flatnonzero(np.isin(split.fine_labels, [8, 48]))
        assert len(rows) == len(expected_rows) > 0
        by_name = {split.filenames[r]: r for r in expected_rows}
        for row in rows:
            source_row = by_name[row["key"]]
            assert row["fine_label"] == split.fine_labels[source_row]
            assert row["label_name"] == dataset.fine_label_names[row["fine_label"]]
            assert row["label"] == BIKES.index(row["label_name"])
            assert row["coarse_label"] == split.coarse_labels[source_row]
            with Image.open(out_dir / split_name / row["key"]) as image:
                assert image.mode == "RGB" and image.size == (32, 32)
                assert np.array_equal(np.asarray(image), split.images[source_row])
        pngs = {p.name for p in (out_dir / split_name).glob("*.png")}
        assert pngs == {row["key"] for row in rows}

    stats = json.loads((out_dir / "train" / "stats.json").read_text())
    chosen = dataset.train.images[np.isin(dataset.train.fine_labels, [8, 48])] / 255.0
    assert stats["classes"] == list(BIKES) and stats["images"] == len(chosen)
    assert np.allclose(stats["mean"], chosen.mean(axis=(0, 1, 2)), atol=1e-5)
    assert np.allclose(stats["std"], chosen.std(axis=(0, 1, 2)), atol=1e-5)

    local = {
        f"{prefix}/{p.relative_to(out_dir).as_posix()}": p.read_bytes()
        for p in out_dir.rglob("*")
        if p.is_file()
    }
    remote = _bucket_objects(bucket, prefix)
    assert remote.keys() == local.keys()
    assert all(hashlib.md5(remote[k]).digest() == hashlib.md5(local[k]).digest() for k in local)
    assert f"load: {len(local)} objects uploaded, 0 skipped" in out

    # A rerun uploads nothing; after losing some objects it uploads only those.
    rc, out, err = _run_cli(args, capsys)
    assert rc == 0, err
    assert f"load: 0 objects uploaded, {len(local)} skipped, 0 bytes" in out
    s3 = boto3.client("s3")
    lost = sorted(local)[:3]
    for key in lost:
        s3.delete_object(Bucket=bucket, Key=key)
    rc, out, err = _run_cli(args, capsys)
    assert rc == 0, err
    assert f"load: 3 objects uploaded, {len(local) - 3} skipped" in out
    assert _bucket_objects(bucket, prefix).keys() == local.keys()


def test_checksum_mismatch_is_refused_and_writes_nothing(
    small_archive: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = small_archive
    work = tmp_path / "work"
    # The synthetic archive is not the official one: with the official MD5 it is refused.
    rc, _, err = _run_cli(["--source", str(path), "--work-dir", str(work), "--no-upload"], capsys)
    assert rc == 1
    assert "ChecksumMismatchError" in err and archive.OFFICIAL_MD5 in err
    assert not work.exists() or not any(work.rglob("*"))
    with pytest.raises(archive.ChecksumMismatchError):
        archive.read_archive(path, "0" * 32)


@pytest.fixture
def archive_server(small_archive: tuple[Path, str]) -> Iterator[str]:
    """The small archive served over HTTP on a free local port."""
    folder = small_archive[0].parent

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(folder), **kwargs)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{synthetic.ARCHIVE_NAME}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_download_verifies_before_keeping(
    archive_server: str, small_archive: tuple[Path, str], tmp_path: Path
) -> None:
    with pytest.raises(archive.ChecksumMismatchError):
        archive.fetch(archive_server, tmp_path / "bad", archive.OFFICIAL_MD5)
    assert not any((tmp_path / "bad").rglob("*"))
    good = archive.fetch(archive_server, tmp_path / "good", small_archive[1])
    assert good == tmp_path / "good" / synthetic.ARCHIVE_NAME
    assert archive.file_md5(good) == small_archive[1]
    assert archive.read_archive(good, small_archive[1]).train.images.shape == (600, 32, 32, 3)


class _RunsCommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


class _Evals:
    def __reduce__(self) -> tuple[Any, ...]:
        return (eval, ("__import__('os').getcwd()",))


def _archive_with_meta(tmp_path: Path, source: Path, meta_payload: bytes) -> Path:
    """A copy of the archive whose meta pickle is replaced."""
    members = _members(source)
    members["cifar-100-python/meta"] = meta_payload
    target = tmp_path / "evil.tar.gz"
    with tarfile.open(target, "w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return target


@pytest.mark.parametrize(
    "make_payload",
    [
        lambda marker: pickle.dumps(_RunsCommand(marker), protocol=2),
        lambda marker: pickle.dumps({b"fine_label_names": _RunsCommand(marker)}, protocol=0),
        lambda marker: pickle.dumps(_Evals(), protocol=4),
        lambda marker: pickle.dumps(np.array([1, "x"], dtype=object), protocol=2),
        lambda marker: pickle.dumps({b"data": np.array([None], dtype=object)}, protocol=2),
    ],
)
def test_malicious_pickle_is_refused(
    tmp_path: Path, small_archive: tuple[Path, str], make_payload: Any
) -> None:
    marker = tmp_path / "pwned"
    payload = make_payload(marker)
    with pytest.raises(archive.UnsafePickleError):
        archive.restricted_loads(payload)
    evil = _archive_with_meta(tmp_path, small_archive[0], payload)
    with pytest.raises(archive.UnsafePickleError):
        archive.read_archive(evil, archive.file_md5(evil))
    assert not marker.exists()


def test_restricted_unpickler_reads_plain_python3_pickles() -> None:
    data = np.arange(6, dtype=np.uint8).reshape(2, 3)
    batch: dict[Any, Any] = {
        b"data": data,
        "names": [b"a", "b"],
        "n": {1.5, 2},
    }
    for protocol in (2, 4, 5):
        loaded = archive.restricted_loads(pickle.dumps(batch, protocol=protocol))
        assert np.array_equal(loaded[b"data"], data) and loaded["names"] == [b"a", "b"]


def test_archive_member_that_is_a_link_is_refused(
    tmp_path: Path, small_archive: tuple[Path, str]
) -> None:
    members = _members(small_archive[0])
    target = tmp_path / "links.tar.gz"
    with tarfile.open(target, "w:gz") as tar:
        for name, payload in members.items():
            if name.endswith("/train"):
                link = tarfile.TarInfo(name)
                link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tar.addfile(link)
                continue
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(archive.UnsafeArchiveError):
        archive.read_archive(target, archive.file_md5(target))


def test_select_classes() -> None:
    names = synthetic.FINE_LABEL_NAMES
    assert transform.select_classes("motorcycle, bicycle", names) == ["bicycle", "motorcycle"]
    assert transform.select_classes("all", names) == names
    with pytest.raises(transform.UnknownClassError):
        transform.select_classes("bicycle,unicorn", names)


def test_synthetic_archive_is_cached_while_it_matches(tmp_path: Path) -> None:
    rows = {"rows_train": 200, "rows_test": 100}
    path, md5 = synthetic.ensure_archive(tmp_path, 1, **rows)
    written = path.stat().st_mtime_ns
    assert synthetic.ensure_archive(tmp_path, 1, **rows) == (path, md5)
    assert path.stat().st_mtime_ns == written
    with open(path, "ab") as f:  # a damaged archive is regenerated
        f.write(b"x")
    assert synthetic.ensure_archive(tmp_path, 1, **rows) == (path, md5)
    _, other = synthetic.ensure_archive(tmp_path, 2, **rows)
    assert other != md5
