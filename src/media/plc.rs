//! Packet-loss concealment for G.711 (8 kHz PCM), in the manner of ITU-T G.711 Appendix I:
//! a lost stretch is filled by repeating the last pitch period (then the last two, then three, so
//! a long loss does not buzz), joined by overlap-add so no sample steps out of line, attenuated
//! after the first 10 ms (20 % per 10 ms, silent after 60 ms), and blended back into the audio
//! that follows (4 ms, plus 4 ms per further 10 ms lost, at most 10 ms).
//!
//! Unlike Appendix I it adds no delay: instead of reworking the last 3.75 ms already played, the
//! repeated period starts with a correction that fades out over a quarter period, so the first
//! concealed sample follows the last received one as the period's own first sample followed its
//! predecessor. The same blend smooths a splice, where the jitter buffer dropped a frame to cut
//! its delay ([`G711Concealer::splice`]). Received audio passes through unchanged (relay stays bit-exact), so a clean
//! stream costs a copy into the history ring. No allocation: everything is fixed-size.

/// Shortest pitch period searched: 5 ms (200 Hz).
const PITCH_MIN: usize = 40;
/// Longest pitch period searched: 15 ms (66.7 Hz).
const PITCH_MAX: usize = 120;
/// Samples correlated to find the period: 20 ms.
const CORR_LEN: usize = 160;
/// Longest overlap: a quarter of the longest period.
const OVERLAP_MAX: usize = PITCH_MAX / 4;
/// History ring (a power of two ≥ the correlation span and three periods plus an overlap).
const RING: usize = 512;
/// Samples in 10 ms: the unit in which repetition widens and attenuation proceeds.
const TEN_MS: usize = 80;
/// Concealment fades to silence over this many samples: 60 ms.
const SILENT_AFTER: usize = 6 * TEN_MS;
/// Cross-fade across a splice: 5 ms.
const SPLICE_LEN: usize = 40;
/// Three periods plus the overlap before them.
const PB_LEN: usize = 3 * PITCH_MAX + OVERLAP_MAX;
/// Samples the period search looks at: the correlation window and the longest lag behind it.
const HISTORY: usize = CORR_LEN + PITCH_MAX;
/// Partial sums per correlation (`CORR_LEN` is a multiple of it).
const LANES: usize = 8;

/// Where the concealer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Passing received audio through.
    Clean,
    /// Filling a loss.
    Concealing,
    /// Audio is back; this many samples of it are still blended with the repetition.
    Blending { left: usize, len: usize },
}

/// The concealer of one G.711 stream. See the module docs.
#[derive(Clone)]
pub struct G711Concealer {
    ring: [i16; RING],
    /// Samples written so far (wrapping); the newest is at `pos - 1`.
    pos: usize,
    /// The history at the start of the loss, oldest first: three periods and an overlap before.
    pb: [f32; PB_LEN],
    period: usize,
    overlap: usize,
    state: Phase,
    /// Samples concealed in the current (or just ended) loss.
    erased: usize,
    /// Position in the repeated cycle.
    cycle_pos: usize,
    /// Periods in the repeated cycle (1 for the first 10 ms, then 2, then 3).
    periods: usize,
    /// After a widening: the narrower cycle's position and the samples left to cross-fade.
    narrow_pos: usize,
    widen_left: usize,
    /// The step from the last received sample into the repetition, fading out over `overlap`.
    junction: f32,
}

impl std::fmt::Debug for G711Concealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("G711Concealer")
            .field("state", &self.state)
            .field("period", &self.period)
            .field("erased", &self.erased)
            .finish_non_exhaustive()
    }
}

impl Default for G711Concealer {
    fn default() -> Self {
        Self::new()
    }
}

impl G711Concealer {
    /// A concealer with silent history.
    pub fn new() -> Self {
        Self {
            ring: [0; RING],
            pos: 0,
            pb: [0.0; PB_LEN],
            period: PITCH_MAX,
            overlap: OVERLAP_MAX,
            state: Phase::Clean,
            erased: 0,
            cycle_pos: 0,
            periods: 1,
            narrow_pos: 0,
            widen_left: 0,
            junction: 0.0,
        }
    }

    /// True while a loss is being concealed or the audio after it blended in.
    pub fn concealing(&self) -> bool {
        self.state != Phase::Clean
    }

    /// `pcm[..received]` arrived; the rest of `pcm` was lost and is concealed in place. The
    /// received part is kept as is, except just after a loss, where it is blended in.
    pub fn process(&mut self, pcm: &mut [i16], received: usize) {
        let received = received.min(pcm.len());
        if received == pcm.len() && self.state == Phase::Clean {
            // The common case: all received, nothing to blend: just remember it.
            self.remember(pcm);
            return;
        }
        let (good, lost) = pcm.split_at_mut(received);
        for s in good.iter_mut() {
            match self.state {
                Phase::Clean => {}
                Phase::Concealing => {
                    let len = self.blend_len();
                    self.state = Phase::Blending { left: len, len };
                    *s = self.blend(*s);
                }
                Phase::Blending { .. } => *s = self.blend(*s),
            }
            self.push(*s);
        }
        for s in lost.iter_mut() {
            if self.state != Phase::Concealing {
                self.start_loss();
            }
            *s = to_i16(self.next_synthetic());
            self.push(*s);
        }
    }

    /// The received audio that follows does not continue what was played (the jitter buffer
    /// dropped a frame to cut its delay): it is cross-faded in from a continuation of the
    /// audio so far over [`SPLICE_LEN`] samples, so the cut makes no click.
    pub fn splice(&mut self) {
        if self.state == Phase::Concealing {
            // A loss is being filled: the audio after it is blended in anyway.
            return;
        }
        self.start_loss();
        self.state = Phase::Blending {
            left: SPLICE_LEN,
            len: SPLICE_LEN,
        };
    }

    /// The received audio after a loss blends in over 4 ms plus 4 ms per further 10 ms lost.
    fn blend_len(&self) -> usize {
        (TEN_MS / 2 * (1 + self.erased.saturating_sub(1) / TEN_MS)).min(TEN_MS)
    }

    /// One received sample, mixed with the repetition while blending.
    fn blend(&mut self, received: i16) -> i16 {
        let Phase::Blending { left, len } = self.state else {
            return received;
        };
        let w = (len - left + 1) as f32 / (len + 1) as f32;
        let synthetic = self.next_synthetic();
        self.state = if left > 1 {
            Phase::Blending {
                left: left - 1,
                len,
            }
        } else {
            Phase::Clean
        };
        to_i16(synthetic * (1.0 - w) + f32::from(received) * w)
    }

    /// Appends received audio to the history ring, in at most two copies.
    fn remember(&mut self, pcm: &[i16]) {
        let skip = pcm.len().saturating_sub(RING);
        self.pos = self.pos.wrapping_add(skip);
        let pcm = &pcm[skip..];
        let start = self.pos & (RING - 1);
        let first = (RING - start).min(pcm.len());
        self.ring[start..start + first].copy_from_slice(&pcm[..first]);
        self.ring[..pcm.len() - first].copy_from_slice(&pcm[first..]);
        self.pos = self.pos.wrapping_add(pcm.len());
    }

    fn push(&mut self, s: i16) {
        self.ring[self.pos & (RING - 1)] = s;
        self.pos = self.pos.wrapping_add(1);
    }

    /// The sample `age` samples before the newest (0 = newest).
    fn at(&self, age: usize) -> f32 {
        f32::from(self.ring[self.pos.wrapping_sub(1 + age) & (RING - 1)])
    }

    /// The pitch period of the recent history: the lag with the best normalised correlation.
    /// Runs once per loss; the history is first laid out flat (no ring wrapping per sample) and
    /// the sums are kept in [`LANES`] partial sums the compiler turns into vector adds.
    fn find_period(&self) -> usize {
        let mut history = [0.0f32; HISTORY];
        for (age, h) in history.iter_mut().enumerate() {
            *h = self.at(age);
        }
        let recent = &history[..CORR_LEN];
        let mut best = PITCH_MAX;
        let mut best_score = 0.0f32;
        for lag in PITCH_MIN..=PITCH_MAX {
            let older = &history[lag..lag + CORR_LEN];
            let mut cross = [0.0f32; LANES];
            let mut energy = [0.0f32; LANES];
            for (r, o) in recent.chunks_exact(LANES).zip(older.chunks_exact(LANES)) {
                for (((c, e), r), o) in cross.iter_mut().zip(&mut energy).zip(r).zip(o) {
                    *c += r * o;
                    *e += o * o;
                }
            }
            let cross: f32 = cross.iter().sum();
            let energy: f32 = energy.iter().sum();
            if energy <= 0.0 || cross <= 0.0 {
                continue;
            }
            let score = cross / energy.sqrt();
            if score > best_score {
                best_score = score;
                best = lag;
            }
        }
        best
    }

    fn start_loss(&mut self) {
        let period = self.find_period();
        self.period = period;
        self.overlap = (period / 4).max(8);
        for k in 0..PB_LEN {
            self.pb[k] = self.at(PB_LEN - 1 - k);
        }
        // The repetition's first sample is the one a period back; it followed its predecessor
        // by some step, and the last received sample should step into it the same way.
        self.junction = self.at(0) - self.at(period);
        self.state = Phase::Concealing;
        self.erased = 0;
        self.cycle_pos = 0;
        self.periods = 1;
        self.widen_left = 0;
    }

    /// The sample at `pos` of the repeated cycle of the last `periods` periods, cross-faded
    /// toward the sample a cycle earlier over the cycle's last `overlap` samples, so the wrap
    /// back to its start is smooth.
    fn cycle_sample(&self, periods: usize, pos: usize) -> f32 {
        let len = periods * self.period;
        let at = pos % len;
        let i = PB_LEN - len + at;
        let x = self.pb[i];
        let into_tail = (at + self.overlap).saturating_sub(len);
        match i.checked_sub(len) {
            Some(earlier) if into_tail > 0 => {
                let w = into_tail as f32 / self.overlap as f32;
                x * (1.0 - w) + self.pb[earlier] * w
            }
            _ => x,
        }
    }

    fn next_synthetic(&mut self) -> f32 {
        let erased = self.erased;
        if erased >= SILENT_AFTER {
            return 0.0;
        }
        // Widen the cycle at 10 and 20 ms of loss: the same place in the period, one period
        // further back, cross-faded from the narrower cycle.
        let wanted = 1 + (erased / TEN_MS).min(2);
        if wanted > self.periods && self.state == Phase::Concealing {
            self.narrow_pos = self.cycle_pos;
            self.periods = wanted;
            self.cycle_pos %= self.period;
            self.widen_left = self.overlap;
        }
        let mut x = self.cycle_sample(self.periods, self.cycle_pos);
        if self.widen_left > 0 {
            let w = self.widen_left as f32 / (self.overlap + 1) as f32;
            let narrow = self.cycle_sample(self.periods - 1, self.narrow_pos);
            x = narrow * w + x * (1.0 - w);
            self.widen_left -= 1;
            self.narrow_pos += 1;
        }
        if erased < self.overlap {
            x += self.junction * (1.0 - erased as f32 / self.overlap as f32);
        }
        let gain = if erased < TEN_MS {
            1.0
        } else {
            (1.0 - 0.2 * (erased - TEN_MS) as f32 / TEN_MS as f32).max(0.0)
        };
        self.cycle_pos += 1;
        self.erased += 1;
        x * gain
    }
}

fn to_i16(x: f32) -> i16 {
    x.round().clamp(f32::from(i16::MIN), f32::from(i16::MAX)) as i16
}

#[cfg(test)]
mod tests;
