#!/usr/bin/env python3
"""Scores a call recording against the speech that was sent, with ITU-T P.862 (PESQ) narrowband.

Usage: pesq_score.py REFERENCE.wav RECORDING.wav
Both are 16-bit WAVs at any rate (resampled to 8 kHz). The recording may hold the reference
several times (the sender looped it) surrounded by silence. Every full copy is found by
cross-correlation (the best match, then the best match outside it, ... while a match reaches half
the best one's) and scored; the *last* one is the call's steady state and gives "mos", the first
one (the call's first seconds, where the receivers' jitter buffers still settle) "first_mos".
Scoring a fixed copy, not the best-correlated one, keeps the figure from jumping between copies
from run to run. Prints one JSON object: {"mos": MOS-LQO, "offset_s": ..., "level_db": gain of
that copy against the reference over the reference's active speech, "copies": [...]}.
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


def active_level_db(ref, segment):
    """Level of `segment` against `ref` (dB) over the 20 ms frames where the reference speaks
    (within 30 dB of its loudest frame): pauses and their noise do not count."""
    frame = RATE // 50
    n = len(ref) // frame
    ref_e = np.sum(ref[:n * frame].reshape(n, frame) ** 2, axis=1)
    seg_e = np.sum(segment[:n * frame].reshape(n, frame) ** 2, axis=1)
    active = ref_e >= ref_e.max() * 1e-3
    return 10 * np.log10((seg_e[active].sum() + 1e-12) / (ref_e[active].sum() + 1e-12)), \
        10 * np.log10(ref_e[active].sum() / (active.sum() * frame) + 1e-12)


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    ref = load(sys.argv[1])
    rec = load(sys.argv[2])
    if len(rec) < len(ref):
        print(json.dumps({"error": f"recording ({len(rec) / RATE:.2f} s) shorter than the reference ({len(ref) / RATE:.2f} s)"}))
        return 1
    # Cross-correlation of the recording with the reference: a peak is where a full copy starts.
    corr = fftconvolve(rec, ref[::-1], mode="valid")
    offsets = []
    masked = corr.copy()
    best = float(np.max(corr))
    while True:
        offset = int(np.argmax(masked))
        if masked[offset] < 0.5 * best:
            break
        offsets.append(offset)
        lo, hi = max(0, offset - len(ref) * 9 // 10), offset + len(ref) * 9 // 10
        masked[lo:hi] = -np.inf
    copies = []
    for offset in sorted(offsets):
        segment = rec[offset:offset + len(ref)]
        peak_corr = float(corr[offset] / (np.linalg.norm(ref) * np.linalg.norm(segment) + 1e-12))
        level_db, ref_dbfs = active_level_db(ref, segment)
        mos = pesq(RATE, ref.astype(np.float32), segment.astype(np.float32), "nb")
        copies.append({
            "mos": round(float(mos), 3),
            "offset_s": round(offset / RATE, 3),
            "correlation": round(peak_corr, 3),
            "level_db": round(float(level_db), 2),
            "reference_dbfs": round(float(ref_dbfs), 2),
        })
    steady = copies[-1]
    print(json.dumps({
        **steady,
        "first_mos": copies[0]["mos"],
        "first_offset_s": copies[0]["offset_s"],
        "copies": copies,
        "reference_s": round(len(ref) / RATE, 3),
        "recording_s": round(len(rec) / RATE, 3),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
