"""The built-in image-classification algorithm without a server: hyperparameters, .lst, RecordIO,
the training entry point on a tiny job folder, and the serving hooks it ships in the artefact.
"""

from __future__ import annotations

import io
import json
import re
import struct
from pathlib import Path
from typing import Any

import pytest

from scones.testing_models import coloured_png, import_file
from services.sagemaker_local.algorithms.image_classification import (
    METRIC_DEFINITIONS,
    data,
    recordio,
    train,
)
from services.sagemaker_local.algorithms.image_classification.hyperparameters import (
    SPECS,
    HyperparameterError,
    parse_hyperparameters,
)

REQUIRED = {"num_classes": "2", "num_training_samples": "40"}


def image_job(root: Path, per_class: int = 20, lst_channel: bool = True, **hps: str) -> Path:
    """A job folder (/opt/ml layout) with train/validation images and .lst lists."""
    for split, offset in (("train", 0), ("validation", 1000)):
        images = root / "input" / "data" / split
        images.mkdir(parents=True)
        lst_dir = root / "input" / "data" / f"{split}_lst" if lst_channel else images
        lst_dir.mkdir(parents=True, exist_ok=True)
        lines = []
        for i in range(2 * per_class):
            label = i % 2
            (images / "img").mkdir(exist_ok=True)
            (images / "img" / f"{i}.png").write_bytes(coloured_png(label, offset + i))
            lines.append(f"{i}\t{label}\timg/{i}.png")
        (lst_dir / f"{split}.lst").write_text("\n".join(lines) + "\n")
    config = root / "input" / "config"
    config.mkdir(parents=True)
    hyperparameters = {**REQUIRED, "image_shape": "3,16,16", "epochs": "3", **hps}
    (config / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    channels = ["train", "validation"] + (["train_lst", "validation_lst"] if lst_channel else [])
    (config / "inputdataconfig.json").write_text(
        json.dumps({c: {"ContentType": "application/x-image"} for c in channels})
    )
    return root


# -- hyperparameters ----------------------------------------------------------------------------
def test_defaults_are_aws_defaults() -> None:
    values = parse_hyperparameters(REQUIRED)
    assert values["epochs"] == 30
    assert values["learning_rate"] == 0.1
    assert values["mini_batch_size"] == 32
    assert values["image_shape"] == (3, 224, 224)
    assert values["num_layers"] == 152
    assert values["optimizer"] == "sgd"
    assert values["early_stopping"] is False


def test_values_as_sdk_v2_writes_them() -> None:
    values = parse_hyperparameters(
        {
            **REQUIRED,
            "image_shape": "3,32,32",
            "early_stopping": "True",
            "use_pretrained_model": "1",
            "learning_rate": "0.001",
            "lr_scheduler_step": "10,20",
            "optimizer": '"adam"',  # a JSON-encoded string, as some clients send
            "sagemaker_region": '"us-east-1"',  # the SDK's own names are not the algorithm's
        }
    )
    assert values["image_shape"] == (3, 32, 32)
    assert values["early_stopping"] is True
    assert values["use_pretrained_model"] is True
    assert values["lr_scheduler_step"] == (10, 20)
    assert values["optimizer"] == "adam"


def test_unknown_names_fail_as_aws_words_it() -> None:
    with pytest.raises(HyperparameterError) as error:
        parse_hyperparameters({**REQUIRED, "learning-rate": "0.1", "batch": "3"})
    message = str(error.value)
    assert message.startswith(
        "ClientError: Unable to initialize the algorithm. Failed to validate input hyperparameters."
    )
    assert "Additional properties are not allowed ('batch', 'learning-rate' were unexpected)" in (
        message
    )


@pytest.mark.parametrize("missing", ["num_classes", "num_training_samples"])
def test_required_names(missing: str) -> None:
    given = {k: v for k, v in REQUIRED.items() if k != missing}
    with pytest.raises(HyperparameterError, match=f"'{missing}' is a required property"):
        parse_hyperparameters(given)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("num_classes", "0"),
        ("num_classes", "2.5"),
        ("epochs", "ten"),
        ("learning_rate", "0"),
        ("learning_rate", "1.5"),
        ("momentum", "nan"),
        ("image_shape", "3,32"),
        ("image_shape", "4,32,32"),
        ("num_layers", "17"),
        ("top_k", "1"),
        ("early_stopping", "maybe"),
        ("lr_scheduler_step", "20,10"),
    ],
)
def test_bad_values(name: str, value: str) -> None:
    with pytest.raises(HyperparameterError) as error:
        parse_hyperparameters({**REQUIRED, name: value})
    assert f"'{value}' is not valid under any of the given schemas" in str(error.value)
    assert f"schema['properties']['{name}']" in str(error.value)


def test_enumerations_list_the_choices() -> None:
    with pytest.raises(HyperparameterError, match=r"'lbfgs' is not one of \['sgd', 'adam'"):
        parse_hyperparameters({**REQUIRED, "optimizer": "lbfgs"})


def test_checkpoint_frequency_not_above_epochs() -> None:
    with pytest.raises(HyperparameterError, match="checkpoint_frequency"):
        parse_hyperparameters({**REQUIRED, "epochs": "2", "checkpoint_frequency": "3"})


def test_every_documented_name_has_a_stated_local_effect() -> None:
    documented = {
        "num_classes", "num_training_samples", "augmentation_type", "beta_1", "beta_2",
        "checkpoint_frequency", "early_stopping", "early_stopping_min_epochs",
        "early_stopping_patience", "early_stopping_tolerance", "epochs", "eps", "gamma",
        "image_shape", "kv_store", "learning_rate", "lr_scheduler_factor", "lr_scheduler_step",
        "mini_batch_size", "momentum", "multi_label", "num_layers", "optimizer",
        "precision_dtype", "resize", "top_k", "use_pretrained_model", "use_weighted_loss",
        "weight_decay",
    }  # fmt: skip
    assert set(SPECS) == documented
    assert all(spec.local_effect for spec in SPECS.values())


# -- RecordIO -----------------------------------------------------------------------------------
def test_recordio_round_trip_with_the_magic_inside_a_payload(tmp_path: Path) -> None:
    magic = struct.pack("<I", recordio.MAGIC)
    tricky = b"ab" * 2 + magic + b"xyz" + b"\x00" + magic + magic + b"tail"  # aligned magics
    records = [
        recordio.ImageRecord((1.0,), 7, b"plain image bytes"),
        recordio.ImageRecord((0.0,), 8, tricky),
        recordio.ImageRecord((1.0, 0.0, 2.0), 9, b"multi"),
    ]
    path = tmp_path / "data.rec"
    with path.open("wb") as stream:
        assert recordio.write_image_records(stream, records) == 3
    raw = path.read_bytes()
    assert len(raw) % 4 == 0
    with path.open("rb") as stream:
        back = [recordio.unpack_image_record(p) for p in recordio.read_records(stream)]
    assert back == records
    # The tricky payload was split into parts (continuation flags 1, 2, 3), as dmlc-core does.
    flags = []
    offset = 0
    while offset < len(raw):
        _, word = struct.unpack_from("<II", raw, offset)
        flags.append(word >> 29)
        length = word & recordio.LENGTH_MASK
        offset += 8 + length + (4 - length % 4) % 4
    assert flags == [0, 1, 2, 2, 3, 0]


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"\x00\x00\x00\x00" + b"\x00" * 4, "bad magic"),
        (struct.pack("<II", recordio.MAGIC, 100) + b"short", "truncated"),
        (struct.pack("<II", recordio.MAGIC, (1 << 29) | 4) + b"abcd", "ends inside"),
        (struct.pack("<II", recordio.MAGIC, recordio.LENGTH_MASK), "too large"),
    ],
)
def test_recordio_refuses_malformed_files(payload: bytes, why: str) -> None:
    with pytest.raises(recordio.RecordIOError, match=why):
        list(recordio.read_records(io.BytesIO(payload)))


# -- .lst and channels --------------------------------------------------------------------------
def test_lst_lines(tmp_path: Path) -> None:
    lst = tmp_path / "a.lst"
    lst.write_text("0\t1.000000\tdir/a.png\n\n1\t0\tb.png\n")
    assert [(label, path) for label, path, _ in data.read_lst([lst], 2)] == [
        (1, "dir/a.png"),
        (0, "b.png"),
    ]


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("0\t2\ta.png", r"label 2 is out of range.*\[0, 1\]"),
        ("0\t-1\ta.png", "out of range"),
        ("0\t0.5\ta.png", "out of range"),
        ("0\tcat\ta.png", "not a number"),
        ("0 1 a.png", "tab-separated"),
        ("0\t1\t0\ta.png", "multi_label"),
    ],
)
def test_lst_refusals(tmp_path: Path, line: str, why: str) -> None:
    lst = tmp_path / "bad.lst"
    lst.write_text(line + "\n")
    with pytest.raises(data.DataError, match=why):
        data.read_lst([lst], 2)


def test_lst_paths_stay_inside_the_channel(tmp_path: Path) -> None:
    root = image_job(tmp_path / "job", per_class=2)
    (tmp_path / "secret.png").write_bytes(coloured_png(0, 1))
    lst = root / "input" / "data" / "train_lst" / "train.lst"
    lst.write_text("0\t0\t../../../../secret.png\n")
    with pytest.raises(data.DataError, match="outside the channel"):
        data.load_split(root / "input" / "data", "train", data.IMAGE, 2, (3, 16, 16))


def test_missing_validation_channel_fails_as_aws() -> None:
    with pytest.raises(data.DataError, match="'validation' is a required property"):
        data.channel_content_type({"train": {"ContentType": "application/x-image"}})


def test_content_type_defaults_to_recordio_and_refuses_others() -> None:
    assert data.channel_content_type({"train": {}, "validation": {}}) == data.RECORDIO
    with pytest.raises(data.DataError, match="'text/csv' is not one of"):
        data.channel_content_type({"train": {"ContentType": "text/csv"}, "validation": {}})


def test_undecodable_image_is_a_client_error(tmp_path: Path) -> None:
    root = image_job(tmp_path / "job", per_class=1)
    (root / "input" / "data" / "train" / "img" / "0.png").write_bytes(b"not a png")
    with pytest.raises(data.DataError, match="not a decodable image"):
        data.load_split(root / "input" / "data", "train", data.IMAGE, 2, (3, 16, 16))


# -- the algorithm, end to end in a job folder --------------------------------------------------
def run_job(root: Path) -> tuple[int, str]:
    code = train.run(root)
    failure = root / "output" / "failure"
    return code, failure.read_text() if failure.exists() else ""


def test_training_writes_a_servable_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train._setup_logging()
    root = image_job(tmp_path / "job", top_k="2", checkpoint_frequency="3")
    code, failure = run_job(root)
    assert (code, failure) == (0, "")
    out = capsys.readouterr().out
    for epoch in range(3):
        assert f"Epoch[{epoch}] Train-accuracy=" in out
        assert f"Epoch[{epoch}] Validation-accuracy=" in out
    assert "Epoch[2] Train-top_k_accuracy_2=" in out
    for definition in METRIC_DEFINITIONS:  # what sagemaker-local applies to this log
        assert len(re.findall(definition["Regex"], out)) == 3, definition
    accuracies = [float(v) for v in re.findall(r"Validation-accuracy=([0-9.]+)", out)]
    assert accuracies[-1] >= 0.9  # colours are trivially separable
    model_dir = root / "model"
    assert (model_dir / "image-classification-0003.pt").is_file()
    assert json.loads((model_dir / "model-shapes.json").read_text()) == [
        {"shape": [1, 3, 16, 16], "name": "data"}
    ]
    served = import_file(model_dir / "code" / "inference.py")
    model = served.model_fn(str(model_dir))
    for label in (0, 1):
        batch = served.input_fn(coloured_png(label, 99 + label, size=40), "image/png")  # resized
        body, content_type = served.output_fn(served.predict_fn(batch, model), "*/*")
        probabilities = json.loads(body)
        assert content_type == "application/json"
        assert isinstance(probabilities, list) and len(probabilities) == 2
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)
        assert probabilities.index(max(probabilities)) == label
    prediction = served.predict_fn(
        served.input_fn(coloured_png(1, 5), "application/x-image"), model
    )
    body, content_type = served.output_fn(prediction, "application/jsonlines; verbose=true")
    record = json.loads(body)
    assert content_type == "application/jsonlines"
    assert record["labels"] == [0, 1] and record["predicted_label"] == 1
    body, _ = served.output_fn(prediction, "application/jsonlines")
    assert set(json.loads(body)) == {"prediction"}
    with pytest.raises(ValueError, match="not supported"):
        served.output_fn(prediction, "text/csv")
    with pytest.raises(ValueError, match="content type"):
        served.input_fn(b"{}", "application/json")
    with pytest.raises(ValueError, match="not a decodable image"):
        served.input_fn(b"garbage", "image/jpeg")


def test_recordio_input_and_lst_inside_the_image_channel(tmp_path: Path) -> None:
    # .lst inside the image channels (no *_lst channels) trains the same way.
    root = image_job(tmp_path / "lst_inside", per_class=6, lst_channel=False, epochs="1")
    assert run_job(root) == (0, "")
    # RecordIO: the same images packed as im2rec packs them.
    rec_root = tmp_path / "rec"
    for split in ("train", "validation"):
        channel = rec_root / "input" / "data" / split
        channel.mkdir(parents=True)
        with (channel / f"{split}.rec").open("wb") as stream:
            recordio.write_image_records(
                stream,
                (
                    recordio.ImageRecord((float(i % 2),), i, coloured_png(i % 2, i))
                    for i in range(12)
                ),
            )
    config = rec_root / "input" / "config"
    config.mkdir(parents=True)
    hps = {**REQUIRED, "num_training_samples": "12", "image_shape": "3,16,16", "epochs": "1"}
    (config / "hyperparameters.json").write_text(json.dumps(hps))
    (config / "inputdataconfig.json").write_text(
        json.dumps({"train": {"ContentType": "application/x-recordio"}, "validation": {}})
    )
    assert run_job(rec_root) == (0, "")
    assert (rec_root / "model" / "model.pt").is_file()


def test_label_outside_num_classes_fails_the_job(tmp_path: Path) -> None:
    root = image_job(tmp_path / "job", per_class=2)
    (root / "input" / "data" / "train_lst" / "train.lst").write_text("0\t3\timg/0.png\n")
    code, failure = run_job(root)
    assert code != 0
    assert failure.startswith("ClientError: train.lst line 1: label 3 is out of range")


def test_bad_hyperparameter_fails_before_reading_data(tmp_path: Path) -> None:
    root = image_job(tmp_path / "job", per_class=1, optimizer="lbfgs")
    code, failure = run_job(root)
    assert code != 0
    assert failure.startswith("ClientError: Unable to initialize the algorithm.")


@pytest.mark.parametrize(
    "extra",
    [
        {"optimizer": "adam", "augmentation_type": "crop_color_transform",
         "use_weighted_loss": "1"},
        {"optimizer": "nag", "lr_scheduler_step": "1", "early_stopping": "True",
         "early_stopping_min_epochs": "1", "early_stopping_patience": "1"},
        {"optimizer": "rmsprop", "augmentation_type": "crop", "resize": "20"},
    ],
)  # fmt: skip
def test_options_train(tmp_path: Path, extra: dict[str, Any]) -> None:
    root = image_job(tmp_path / "job", per_class=4, epochs="2", **extra)
    assert run_job(root) == (0, "")
