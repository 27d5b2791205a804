"""The peer of bench_images: decode, convert and resize the same image
folder's files to the same [C, H, W] uint8 arrays, on one thread, with
Pillow (as torchvision's ImageFolder loads: PIL.Image.open, convert,
resize BILINEAR), or with torchvision.io when Pillow is missing.

    python3 bench_images.py FOLDER C H W
"""
import os
import sys
import time


def files(folder):
    out = []
    for cls in sorted(os.listdir(folder)):
        d = os.path.join(folder, cls)
        for name in sorted(os.listdir(d)):
            if name.lower().endswith((".png", ".jpg", ".jpeg")):
                out.append(os.path.join(d, name))
    return out


def main():
    folder, c, h, w = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    paths = files(folder)
    label = "%dx%d %s" % (w, h, "gray" if c == 1 else "RGB")
    try:
        from PIL import Image

        def one(p):
            im = Image.open(p).convert("L" if c == 1 else "RGB")
            if im.size != (w, h):
                im = im.resize((w, h), Image.BILINEAR)
            # channels first, as traind's samples are
            return b"".join(band.tobytes() for band in im.split())
        peer = "Pillow " + Image.__version__
    except ImportError:
        try:
            import torch
            import torchvision
            from torchvision.io import ImageReadMode, read_image
            from torchvision.transforms.functional import resize

            mode = ImageReadMode.GRAY if c == 1 else ImageReadMode.RGB

            def one(p):
                t = read_image(p, mode)
                if t.shape[1:] != (h, w):
                    t = resize(t, [h, w], antialias=True)
                return t
            torch.set_num_threads(1)
            peer = "torchvision " + torchvision.__version__
        except ImportError:
            print("%-34s peer: skipped (neither Pillow nor torchvision is installed: "
                  "apt-get install python3-pil)" % "")
            return 0
    for p in paths[: min(len(paths), 200)]:
        one(p)
    t0, c0 = time.perf_counter(), time.process_time()
    for p in paths:
        one(p)
    t, c = time.perf_counter() - t0, time.process_time() - c0
    print("%-34s %s 1 thread: %8.0f images/s (%8.0f per CPU second)"
          % ("", peer, len(paths) / t, len(paths) / c))
    return 0


if __name__ == "__main__":
    sys.exit(main())
