"""python -m pipeline.generate: sampling a model folder from the command line."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline import generate
from pipeline.core import backbone, checkpoint
from pipeline.core.router import Router


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model") / "student"
    torch.manual_seed(0)
    sampling = checkpoint.sampling_card(3.0, 32, {"encoder": "minilm", "max_tokens": 24, "dim": 384})
    checkpoint.save_model(backbone.build("tiny", 4, 32, 384), folder, {"name": "student", "history": []}, sampling)
    torch.manual_seed(0)
    Router(384).save(folder.parent / "router")
    return folder


def _cli(model_dir, tmp_path, *args):
    out = tmp_path / "out.png"
    code = generate.main(["--model", str(model_dir), "--router", str(model_dir.parent / "router"),
                          "--out", str(out), "--steps", "2", *args])
    return code, out


@pytest.fixture(scope="module")
def edit_dir(tmp_path_factory):
    """A model that reads its source: its patch embedding's source channels drawn at random (a new
    model's start at zero and would ignore any --image)."""
    folder = tmp_path_factory.mktemp("edit") / "student"
    torch.manual_seed(0)
    model = backbone.build("tiny", 4, 32, 384)
    with torch.no_grad():
        model.transformer.pos_embed.proj.weight[:, 3:].normal_(0, 0.5)
    sampling = checkpoint.sampling_card(3.0, 32, {"encoder": "minilm", "max_tokens": 24, "dim": 384})
    checkpoint.save_model(model, folder, {"name": "student", "history": []}, sampling)
    Router(384).save(folder.parent / "router")
    return folder


def _image(tmp_path, size=32, mode="RGB", value=0):
    path = tmp_path / f"source-{size}-{mode}-{value}.png"
    pixels = np.full((size, size, len(mode)), value, np.uint8)
    Image.fromarray(pixels if len(mode) > 1 else pixels[..., 0], mode).save(path)
    return path


def test_text_to_image_writes_an_image_of_the_model_size(model_dir, tmp_path, capsys):
    code, out = _cli(model_dir, tmp_path, "--task", "t2i", "--prompt", "a red circle on white", "--seed", "3")
    assert code == 0 and Image.open(out).size == (32, 32)
    said = json.loads(capsys.readouterr().out)
    assert said["task"] == "t2i" and said["steps"] == 2 and said["seed"] == 3
    first = np.asarray(Image.open(out))
    _cli(model_dir, tmp_path, "--task", "t2i", "--prompt", "a red circle on white", "--seed", "3")
    assert np.array_equal(first, np.asarray(Image.open(out)))  # seeded


def test_an_edit_takes_its_source_image_and_guidance(edit_dir, tmp_path):
    """--image reaches the model and --guidance the sampler: changing either changes the output,
    repeating both does not."""
    def edited(image, guidance):
        code, out = _cli(edit_dir, tmp_path, "--task", "local_edit", "--prompt", "make the circle blue",
                         "--image", str(image), "--guidance", guidance)
        assert code == 0 and Image.open(out).size == (32, 32)
        return np.asarray(Image.open(out))

    black, white = _image(tmp_path), _image(tmp_path, value=255)
    first = edited(black, "2.0")
    assert np.array_equal(first, edited(black, "2.0"))
    assert not np.array_equal(first, edited(white, "2.0"))
    assert not np.array_equal(first, edited(black, "1.0"))


@pytest.mark.parametrize("task", ["t2i", "global_edit"])
def test_without_a_task_the_router_chooses(model_dir, tmp_path, capsys, task):
    router = Router(384)
    with torch.no_grad():  # a router sure of one task, whatever the prompt
        router.net[-1].bias.copy_(torch.tensor([100.0 if c == task else 0.0 for c in router.classes]))
    router.save(tmp_path / "router")
    image = [] if task == "t2i" else ["--image", str(_image(tmp_path))]
    code = generate.main(["--model", str(model_dir), "--router", str(tmp_path / "router"), "--steps", "2",
                          "--out", str(tmp_path / "out.png"), "--prompt", "anything", *image])
    assert code == 0 and json.loads(capsys.readouterr().out)["task"] == task


@pytest.mark.parametrize("args,message", [
    (["--task", "local_edit", "--prompt", "make it red"], "an edit needs --image"),
    (["--task", "t2i", "--prompt", "a square", "--image", "IMG32"], "text-to-image takes no source image"),
    (["--task", "global_edit", "--prompt", "invert it", "--image", "IMG64"], "is 64x64; the model takes 32x32"),
    (["--task", "global_edit", "--prompt", "invert it", "--image", "missing.png"], "cannot read it"),
])
def test_a_request_the_model_cannot_serve_is_a_clear_error(model_dir, tmp_path, capsys, args, message):
    args = [str(_image(tmp_path)) if a == "IMG32" else str(_image(tmp_path, 64)) if a == "IMG64" else
            str(tmp_path / a) if a.endswith(".png") else a for a in args]
    code, out = _cli(model_dir, tmp_path, *args)
    assert code == 2 and message in capsys.readouterr().err and not out.exists()


def test_a_folder_that_is_no_model_is_named(tmp_path, capsys):
    assert generate.main(["--model", str(tmp_path), "--task", "t2i", "--prompt", "x"]) == 2
    assert f"--model {tmp_path}: not a model folder" in capsys.readouterr().err
