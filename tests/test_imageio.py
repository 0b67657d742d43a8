"""Bad input: every problem is an ImageError naming the file; odd formats are converted."""

import numpy as np
import pytest
from PIL import Image

from iad_agent.imageio import ImageError, load_image, load_mask


def test_missing_empty_and_text_files(tmp_path):
    with pytest.raises(ImageError, match="nope.png: file not found"):
        load_image(tmp_path / "nope.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match="empty.png: empty file"):
        load_image(tmp_path / "empty.png")
    (tmp_path / "notes.png").write_text("this is not an image")
    with pytest.raises(ImageError, match="notes.png: not a readable image"):
        load_image(tmp_path / "notes.png")


def test_truncated_png(tmp_path, data_root):
    src = (data_root / "mvtec_ad/hazelnut/train/good/000.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(src[: len(src) // 2])
    with pytest.raises(ImageError, match="cut.png: .*(corrupt|truncated)"):
        load_image(tmp_path / "cut.png")


def test_16bit_palette_grayscale_rgba_become_rgb(tmp_path):
    arr16 = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16).astype(np.uint16)
    Image.fromarray(arr16).save(tmp_path / "deep.png")  # uint16 → mode I;16
    img = load_image(tmp_path / "deep.png")
    assert img.mode == "RGB" and img.size == (64, 64)
    px = np.asarray(img)[..., 0]
    assert px.max() > 200 and px.min() < 10  # rescaled, not clipped to white
    Image.new("RGB", (40, 30), (200, 10, 10)).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "pal.png")
    assert load_image(tmp_path / "pal.png").getpixel((0, 0))[0] > 150
    Image.new("L", (20, 20), 90).save(tmp_path / "gray.png")
    assert load_image(tmp_path / "gray.png").getpixel((3, 3)) == (90, 90, 90)
    Image.new("RGBA", (20, 20), (10, 20, 30, 255)).save(tmp_path / "alpha.png")
    assert load_image(tmp_path / "alpha.png").getpixel((0, 0)) == (10, 20, 30)


def test_tiny_image_refused(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "tiny.png")
    with pytest.raises(ImageError, match="tiny.png: image is only 4x4"):
        load_image(tmp_path / "tiny.png")


@pytest.mark.slow
def test_huge_image_is_downscaled_with_a_message(tmp_path, caplog):
    Image.new("L", (10_000, 10_000), 128).save(tmp_path / "huge.png")
    with caplog.at_level("WARNING"):
        img = load_image(tmp_path / "huge.png", max_side=2048)
    assert img.size == (2048, 2048)
    assert "huge.png: 10000x10000 image downscaled" in caplog.text


def test_masks_binary_and_soft(tmp_path):
    soft = np.zeros((10, 10), np.uint8)
    soft[2:4, 2:4] = 200
    soft[6, 6] = 60  # soft edge below the midpoint
    Image.fromarray(soft).save(tmp_path / "soft.png")
    m = load_mask(tmp_path / "soft.png")
    assert m.sum() == 4
    Image.fromarray((soft > 0).astype(np.uint8)).save(tmp_path / "binary01.png")
    assert load_mask(tmp_path / "binary01.png").sum() == 5
    assert load_mask(tmp_path / "soft.png", size=(20, 20)).shape == (20, 20)
