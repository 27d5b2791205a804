#!/usr/bin/python3
"""Write the data of examples/csv-regression.yaml: a projectile's flight.

Each line is a throw: launch speed (m/s), angle (degrees), launch height
(m) and a headwind (m/s), then what to predict from them: the distance
flown (m) and the time in the air (s), with air drag proportional to the
speed, integrated in steps of 1 ms.  A small regression with two targets
per sample that no straight line fits; written by a script (no data is
committed), the same numbers every time for a given seed.

    examples/make_regression_csv.py [DIR]     # DIR/projectile-{train,test}.csv
"""
import math
import os
import random
import sys

G, DRAG, DT = 9.81, 0.05, 0.001


def flight(speed, angle, height, wind):
    vx = speed * math.cos(math.radians(angle))
    vy = speed * math.sin(math.radians(angle))
    x, y, t = 0.0, height, 0.0
    while y >= 0.0 or t == 0.0:
        ax = -DRAG * (vx + wind)
        ay = -G - DRAG * vy
        vx, vy = vx + ax * DT, vy + ay * DT
        x, y, t = x + vx * DT, y + vy * DT, t + DT
    return x, t


def write(path, n, rng):
    with open(path, "w") as f:
        f.write("speed,angle,height,wind,distance,time\n")
        for _ in range(n):
            speed = rng.uniform(5.0, 30.0)
            angle = rng.uniform(10.0, 80.0)
            height = rng.uniform(0.0, 10.0)
            wind = rng.uniform(-5.0, 5.0)
            dist, time = flight(speed, angle, height, wind)
            f.write("%.3f,%.3f,%.3f,%.3f,%.4f,%.4f\n" % (speed, angle, height, wind, dist, time))


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    rng = random.Random(2026)
    write(os.path.join(out, "projectile-train.csv"), 4000, rng)
    write(os.path.join(out, "projectile-test.csv"), 1000, rng)


if __name__ == "__main__":
    main()
