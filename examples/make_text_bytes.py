#!/usr/bin/python3
"""Write the data of examples/text-transformer.yaml: which licence a piece
of text comes from.

Each sample is 64 bytes of one of the licence texts every Debian machine
has in /usr/share/common-licenses, its class the licence.  Each file is
cut into blocks of 256 bytes; every fifth block is test text, the others
train text, and a window lies inside one block, so no test byte was seen
in training while both sets come from the whole of each text (a licence's
end is about other things than its start).  Every class gets about the
same number of windows (the texts are 1.5 to 35 KB long: the windows are
spread evenly over the block positions of each file), and the records
are shuffled with a fixed seed, so the validation split (the train file's
last samples) holds every class.  Written as raw records: a label byte,
then the 64 sample bytes (data.format: raw).  The same bytes every time
on a given Debian release; no data is committed.

    examples/make_text_bytes.py [DIR [TRAIN_PER_CLASS TEST_PER_CLASS]]
        # DIR/licenses-{train,test}.raw; DIR defaults to this script's
"""
import os
import random
import sys

LICENSES = ["Apache-2.0", "Artistic", "BSD", "CC0-1.0", "GFDL-1.3", "GPL-3",
            "LGPL-2.1", "MPL-2.0"]
SRC = "/usr/share/common-licenses"
WINDOW = 64


BLOCK = 256


def windows(text, test, count):
    """Up to count windows of WINDOW bytes, spread evenly over the places
    where one fits inside a train (or test) block of text."""
    starts = []
    for k, b in enumerate(range(0, len(text), BLOCK)):
        if (k % 5 == 4) == test:
            end = min(b + BLOCK, len(text))
            starts += range(b, end - WINDOW + 1)
    n = min(count, len(starts))
    return [text[starts[i * len(starts) // n]:][:WINDOW] for i in range(n)]


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    train_n = int(sys.argv[2]) if len(sys.argv) > 2 else 1200
    test_n = int(sys.argv[3]) if len(sys.argv) > 3 else 250
    train, test = [], []
    for label, name in enumerate(LICENSES):
        with open(os.path.join(SRC, name), "rb") as f:
            text = f.read()
        train += [(label, w) for w in windows(text, False, train_n)]
        test += [(label, w) for w in windows(text, True, test_n)]
    rng = random.Random(2026)
    for path, recs in (("licenses-train.raw", train), ("licenses-test.raw", test)):
        rng.shuffle(recs)
        with open(os.path.join(out, path), "wb") as f:
            for label, w in recs:
                f.write(bytes([label]) + w)
        print("%s: %d samples of %d classes" % (os.path.join(out, path), len(recs),
                                                len(LICENSES)))


if __name__ == "__main__":
    main()
