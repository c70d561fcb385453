#!/usr/bin/env python3
"""Scores a call recording against the speech that was sent, with ITU-T P.862 (PESQ) narrowband.

Usage: pesq_score.py REFERENCE.wav RECORDING.wav
Both are 16-bit WAVs at any rate (resampled to 8 kHz). The recording may hold the reference
several times (the sender looped it) surrounded by silence: the best-matching full copy, found
by cross-correlation, is scored. Prints one JSON object: {"mos": MOS-LQO, "offset_s": ...}.
Needs: pip install pesq numpy scipy (scripts/deps.sh).
"""
import json
import sys
from math import gcd

import numpy as np
from pesq import pesq
from scipy.io import wavfile
from scipy.signal import fftconvolve, resample_poly

RATE = 8000


def load(path):
    rate, data = wavfile.read(path)
    if data.ndim > 1:
        data = data[:, 0]
    x = data.astype(np.float64) / 32768.0
    if rate != RATE:
        g = gcd(rate, RATE)
        x = resample_poly(x, RATE // g, rate // g)
    return x


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    ref = load(sys.argv[1])
    rec = load(sys.argv[2])
    if len(rec) < len(ref):
        print(json.dumps({"error": f"recording ({len(rec) / RATE:.2f} s) shorter than the reference ({len(ref) / RATE:.2f} s)"}))
        return 1
    # Cross-correlation of the recording with the reference: the peak is where a full copy starts.
    corr = fftconvolve(rec, ref[::-1], mode="valid")
    offset = int(np.argmax(corr))
    segment = rec[offset:offset + len(ref)]
    peak_corr = float(corr[offset] / (np.linalg.norm(ref) * np.linalg.norm(segment) + 1e-12))
    mos = pesq(RATE, ref.astype(np.float32), segment.astype(np.float32), "nb")
    print(json.dumps({
        "mos": round(float(mos), 3),
        "offset_s": round(offset / RATE, 3),
        "correlation": round(peak_corr, 3),
        "reference_s": round(len(ref) / RATE, 3),
        "recording_s": round(len(rec) / RATE, 3),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
