"""pipeline.curation.images: what a user's image file becomes, or the one-line refusal naming it."""
import numpy as np
import pytest
from PIL import Image

from pipeline import generate
from pipeline.curation import images


def test_a_16_bit_grey_png_is_scaled_to_8_bits_not_clipped(tmp_path):
    """PIL's convert("RGB") clips 16-bit values: a 0..65535 gradient came back 255 but for its first pixel."""
    gradient = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    Image.fromarray(gradient).save(tmp_path / "g16.png")
    rgb = images.read_rgb(tmp_path / "g16.png")
    assert rgb.dtype == np.uint8 and rgb.shape == (32, 32, 3)
    assert np.array_equal(rgb[..., 0], np.rint(gradient / 257.0).astype(np.uint8))
    assert rgb[0, 0, 0] == 0 and rgb[-1, -1, 0] == 255 and abs(int(rgb[16, 0, 0]) - 128) <= 2


def test_a_palette_image_with_a_transparent_entry_is_refused(tmp_path):
    img = Image.new("P", (8, 8), 0)
    img.putpalette([255, 0, 0] * 256)
    img.info["transparency"] = 0  # every pixel is palette entry 0: all transparent
    img.save(tmp_path / "clear.png", transparency=0)
    with pytest.raises(images.ImageError, match=r"clear.png: has transparent pixels \(100%\)"):
        images.read_rgb(tmp_path / "clear.png")


def test_float_and_32_bit_images_and_oversized_headers_are_refused_before_decoding(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((4, 4), np.float32)).save(tmp_path / "f.tiff")
    with pytest.raises(images.ImageError, match="f.tiff: float pixels"):
        images.read_rgb(tmp_path / "f.tiff")
    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(images, "MAX_PIXELS", 1000)
    with pytest.raises(images.ImageError, match=r"big.png: 64x64 pixels, above the 1,000"):
        images.read_rgb(tmp_path / "big.png")


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0"])
def test_generate_refuses_a_guidance_that_is_not_a_finite_positive_number(value, tmp_path, capsys):
    code = generate.main(["--prompt", "a red circle", "--guidance", value, "--out", str(tmp_path / "x.png")])
    assert code == 2 and "--guidance a finite number > 0" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("args,message", [
    (["--steps", "100000000"], "--steps must be between 1 and 1000"),
    (["--seed", str(2 ** 70)], "--seed must be between 0 and 2**63 - 1"),
    (["--out", "OUT/picture"], "name an image file"),
    (["--out", "/proc/danceopd/x.png"], "--out /proc/danceopd/x.png: cannot write"),
])
def test_generate_checks_its_arguments_before_loading_anything(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(generate, "run", lambda a: pytest.fail("sampled before checking its arguments"))
    args = [str(tmp_path / a[4:]) if a.startswith("OUT/") else a for a in args]
    assert generate.main(["--prompt", "a red circle", *args]) == 2
    assert message in capsys.readouterr().err


def test_generate_names_a_damaged_model_folder(tmp_path, capsys):
    from pipeline.core import backbone, checkpoint

    folder = tmp_path / "model"
    sampling = checkpoint.sampling_card(3.0, 32, {"encoder": "minilm", "max_tokens": 24, "dim": 384})
    checkpoint.save_model(backbone.build("tiny", 4, 32, 384), folder, {"name": "m", "history": []}, sampling)
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"not weights")
    code = generate.main(["--model", str(folder), "--task", "t2i", "--prompt", "a red circle", "--steps", "1",
                          "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert code == 2 and f"--model {folder}: cannot load its weights" in err and "Traceback" not in err
