"""The images format against Pillow, which torchvision's ImageFolder loads
with: image_probe's decoding, conversion and resizing of PNG and JPEG
files of every kind must match PIL.Image.open(f).convert(mode).resize(
(w, h), BILINEAR), to the value where Pillow computes in floating point as
we do, and within 1 where its fixed-point arithmetic rounds between the
passes.  Skipped (77) without Pillow.

    /usr/bin/python3 pil_check.py IMAGE_PROBE
"""
import os
import random
import subprocess
import sys
import tempfile

try:
    from PIL import Image
except ImportError:
    print("skipped: Pillow is not installed for /usr/bin/python3 (apt-get install python3-pil)")
    sys.exit(77)


def probe(exe, path, ch, w, h, tmp):
    out = os.path.join(tmp, "out.raw")
    subprocess.run([exe, path, str(ch), str(w), str(h), out], check=True)
    with open(out, "rb") as f:
        return f.read()


def pil(path, ch, w, h):
    im = Image.open(path).convert("L" if ch == 1 else "RGB")
    if im.size != (w, h):
        im = im.resize((w, h), Image.BILINEAR)
    return b"".join(band.tobytes() for band in im.split())


def main():
    exe = sys.argv[1]
    rnd = random.Random(15)
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        w, h = 37, 29
        rgba = [tuple(rnd.randrange(256) for _ in range(4)) for _ in range(w * h)]
        for mode, name in [("RGB", "rgb.png"), ("RGBA", "rgba.png"), ("L", "gray.png"),
                           ("LA", "ga.png"), ("P", "palette.png"), ("I;16", "gray16.png"),
                           ("RGB", "rgb.jpg"), ("L", "gray.jpg")]:
            im = Image.new("RGBA", (w, h))
            im.putdata(rgba)
            if mode == "P":
                im = im.convert("RGB").quantize(16)
            elif mode == "I;16":
                im = Image.new("I;16", (w, h))
                im.putdata([rnd.randrange(256) * 257 for _ in range(w * h)])
            else:
                im = im.convert(mode)
            path = os.path.join(tmp, name)
            im.save(path, quality=90) if name.endswith(".jpg") else im.save(path)
            files.append(path)
        for path in files:
            for ch in (1, 3):
                for size in [(37, 29), (74, 58), (18, 14), (10, 7), (50, 20), (112, 112)]:
                    mine = probe(exe, path, ch, size[0], size[1], tmp)
                    ref = pil(path, ch, size[0], size[1])
                    diff = max(abs(a - b) for a, b in zip(mine, ref))
                    # the same size: no resize, so decoding and conversion alone, exact
                    allowed = 0 if size == (w, h) else 1
                    name = os.path.basename(path)
                    if "16" in name:
                        continue  # Pillow clips 16-bit gray at 255 (a known limit); we scale
                    if len(mine) != len(ref) or diff > allowed:
                        print("%s as %d channels at %dx%d: differs from Pillow by %d (allowed %d)"
                              % (name, ch, size[0], size[1], diff, allowed))
                        failed += 1
        print("pil_check: %d files (16-bit PNG left out) x 2 modes x 6 sizes, %d differ"
              % (len(files), failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
