//! Fuzzing on stable Rust under `cargo test`: a seeded mutation loop over a corpus in the repo.
//!
//! `cargo fuzz` needs nightly and no fuzzing crate is vendored, so each target is a plain test
//! that mutates the seeds in `tests/fuzz/corpus/<target>/` (bit flips, interesting bytes and
//! numbers, dictionary tokens, splices, cuts) and feeds them to the code a stranger reaches.
//! Inputs the target accepts (parsed without error) join the corpus for the run, a cheap
//! stand-in for coverage feedback that keeps mutants close to valid. A panic (including integer
//! overflow in debug builds) fails the test and saves the input under
//! `target/fuzz-crashes/<target>/`.
//!
//! Budget per target: `SRBRIDGE_FUZZ_SECS` seconds (default 3, so CI stays short); seed of the
//! mutation sequence: `SRBRIDGE_FUZZ_SEED` (default 1). Each target prints its executions to
//! stderr (`cargo test --lib fuzz:: -- --nocapture`).

mod targets;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Default seconds per target: a few seconds each keeps the whole set under a minute on 2 cores.
const DEFAULT_SECS: f64 = 3.0;
/// Mutants that parse are kept, up to this many, to explore deeper from valid shapes.
const MAX_KEPT: usize = 512;

/// SplitMix64: tiny, seedable, good enough to drive mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

const INTERESTING_BYTES: &[u8] = &[
    0, 1, 0x7F, 0x80, 0xFF, b'\r', b'\n', b' ', b'\t', b':', b';', b'=', b',', b'"', b'\\', b'{',
    b'}', b'[', b']', b'<', b'>', b'/', b'0', b'9', b'-', b'%', 0xC0, 0xE2,
];

const INTERESTING_NUMBERS: &[&str] = &[
    "0",
    "1",
    "-1",
    "127",
    "128",
    "255",
    "256",
    "65535",
    "65536",
    "2147483647",
    "2147483648",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999999999",
    "1e309",
    "-0",
    "0x10",
];

/// One mutant of `input`: one to four stacked edits.
fn mutate(
    rng: &mut Rng,
    input: &[u8],
    corpus: &[Vec<u8>],
    dict: &[&str],
    max_len: usize,
) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = out.len();
        match rng.below(11) {
            0 if len > 0 => {
                let i = rng.below(len);
                out[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                out[i] = INTERESTING_BYTES[rng.below(INTERESTING_BYTES.len())];
            }
            2 if len > 0 => {
                let start = rng.below(len);
                let end = (start + 1 + rng.below(16.min(len - start))).min(len);
                out.drain(start..end);
            }
            3 => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                out.splice(at..at, bytes);
            }
            4 if len > 0 => {
                let start = rng.below(len);
                let end = (start + 1 + rng.below(64.min(len - start))).min(len);
                let chunk = out[start..end].to_vec();
                let at = rng.below(len + 1);
                let times = if rng.chance(8) { 1 + rng.below(64) } else { 1 };
                for _ in 0..times {
                    out.splice(at..at, chunk.iter().copied());
                }
            }
            5 if !dict.is_empty() => {
                let token = dict[rng.below(dict.len())].as_bytes();
                let at = rng.below(len + 1);
                if rng.chance(2) && len > 0 {
                    let end = (at + token.len()).min(len);
                    out.splice(at..end, token.iter().copied());
                } else {
                    out.splice(at..at, token.iter().copied());
                }
            }
            6 if !corpus.is_empty() => {
                let other = &corpus[rng.below(corpus.len())];
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                out.truncate(cut);
                out.extend_from_slice(&other[from..]);
            }
            7 if len > 0 => out.truncate(rng.below(len)),
            8 => replace_number(rng, &mut out),
            9 if len > 0 => {
                let start = rng.below(len);
                let end = (start + 1 + rng.below(8)).min(len);
                for b in &mut out[start..end] {
                    *b = rng.next() as u8;
                }
            }
            10 if len >= 2 => {
                // Swap two bytes (reorders fields, breaks pairs like \r\n).
                let (a, b) = (rng.below(len), rng.below(len));
                out.swap(a, b);
            }
            _ => {}
        }
    }
    out.truncate(max_len);
    out
}

/// Replaces one run of ASCII digits with an interesting number (ports, lengths, counts).
fn replace_number(rng: &mut Rng, out: &mut Vec<u8>) {
    let starts: Vec<usize> = (0..out.len())
        .filter(|&i| out[i].is_ascii_digit() && (i == 0 || !out[i - 1].is_ascii_digit()))
        .collect();
    if starts.is_empty() {
        return;
    }
    let start = starts[rng.below(starts.len())];
    let end = (start..out.len())
        .find(|&i| !out[i].is_ascii_digit())
        .unwrap_or(out.len());
    let number = INTERESTING_NUMBERS[rng.below(INTERESTING_NUMBERS.len())];
    out.splice(start..end, number.bytes());
}

/// What one target's run did.
#[derive(Debug, Default)]
struct Report {
    executions: u64,
    accepted: u64,
    corpus: usize,
    slowest: Duration,
}

fn budget() -> Duration {
    let secs = std::env::var("SRBRIDGE_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .unwrap_or(DEFAULT_SECS);
    Duration::from_secs_f64(secs)
}

fn seed() -> u64 {
    std::env::var("SRBRIDGE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
}

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz/corpus")
        .join(target)
}

/// The seed files of `target`, sorted by name so runs repeat.
fn load_seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = corpus_dir(target);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    let seeds: Vec<Vec<u8>> = paths.iter().filter_map(|p| std::fs::read(p).ok()).collect();
    assert!(!seeds.is_empty(), "corpus {} is empty", dir.display());
    seeds
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".to_string())
}

/// Saves a crashing input and fails the test with it, escaped.
fn crashed(target: &str, input: &[u8], message: &str) -> ! {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/fuzz-crashes")
        .join(target);
    let _ = std::fs::create_dir_all(&dir);
    let hash = input.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    });
    let path = dir.join(format!("{hash:016x}"));
    let _ = std::fs::write(&path, input);
    let shown: String = input
        .escape_ascii()
        .to_string()
        .chars()
        .take(4000)
        .collect();
    panic!(
        "fuzz target {target} panicked: {message}\ninput saved to {}\ninput: b\"{shown}\"",
        path.display()
    );
}

/// Runs `target` over its corpus and mutants for the budget. `run` returns true when the input
/// was accepted (parsed), which keeps the mutant for further mutation.
fn fuzz(target: &str, dict: &[&str], max_len: usize, mut run: impl FnMut(&[u8]) -> bool) {
    let budget = budget();
    let mut rng = Rng(seed()
        ^ target
            .bytes()
            .fold(0u64, |h, b| h.rotate_left(5) ^ u64::from(b)));
    let seeds = load_seeds(target);
    let mut corpus = seeds.clone();
    let mut report = Report {
        executions: 0,
        accepted: 0,
        corpus: 0,
        slowest: Duration::ZERO,
    };
    let started = Instant::now();
    let mut slowest_input = Vec::new();
    let mut exec = |input: &[u8], report: &mut Report, slowest_input: &mut Vec<u8>| -> bool {
        let t = Instant::now();
        let accepted = match catch_unwind(AssertUnwindSafe(|| run(input))) {
            Ok(accepted) => accepted,
            Err(payload) => crashed(target, input, &panic_message(payload.as_ref())),
        };
        let took = t.elapsed();
        if took > report.slowest {
            report.slowest = took;
            *slowest_input = input.to_vec();
        }
        report.executions += 1;
        report.accepted += u64::from(accepted);
        accepted
    };
    for seed in &seeds {
        exec(seed, &mut report, &mut slowest_input);
    }
    while started.elapsed() < budget {
        // A quarter of the mutants start from a seed, so valid shapes stay in play.
        let base = if rng.chance(4) {
            &seeds[rng.below(seeds.len())]
        } else {
            &corpus[rng.below(corpus.len())]
        };
        let input = mutate(&mut rng, base, &corpus, dict, max_len);
        if exec(&input, &mut report, &mut slowest_input) && rng.chance(4) {
            if corpus.len() < MAX_KEPT {
                corpus.push(input);
            } else {
                // Full: replace a kept mutant (never a seed) so the pool keeps moving.
                let i = seeds.len() + rng.below(MAX_KEPT.saturating_sub(seeds.len()).max(1));
                if let Some(slot) = corpus.get_mut(i) {
                    *slot = input;
                }
            }
        }
    }
    report.corpus = corpus.len();
    let secs = started.elapsed().as_secs_f64();
    // The slowest input again, best of three: a machine busy with other work shows up as a slow
    // first run only; an input that is slow by itself (quadratic parsing) stays slow.
    let retimed = (0..3)
        .map(|_| {
            let t = Instant::now();
            exec(&slowest_input, &mut Report::default(), &mut Vec::new());
            t.elapsed()
        })
        .min()
        .unwrap_or_default();
    eprintln!(
        "fuzz {target}: {} executions in {secs:.1} s ({:.0}/s), {} accepted, corpus {} (seeds {}), slowest {:?} ({} bytes, re-timed {:?})",
        report.executions,
        report.executions as f64 / secs,
        report.accepted,
        report.corpus,
        seeds.len(),
        report.slowest,
        slowest_input.len(),
        retimed
    );
    assert!(
        report.executions > seeds.len() as u64,
        "{target}: no mutant ran"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutants_stay_bounded_and_differ() {
        let mut rng = Rng(7);
        let seed = b"INVITE sip:1000@example.com SIP/2.0\r\nContent-Length: 12\r\n\r\n".to_vec();
        let corpus = vec![seed.clone()];
        let mut changed = 0;
        for _ in 0..2000 {
            let m = mutate(&mut rng, &seed, &corpus, &["Via: "], 100);
            assert!(m.len() <= 100);
            changed += usize::from(m != seed);
        }
        assert!(changed > 1800, "{changed}");
    }

    #[test]
    fn numbers_are_swapped_for_interesting_ones() {
        let mut rng = Rng(3);
        let mut seen_big = false;
        for _ in 0..200 {
            let mut s = b"port 5060;".to_vec();
            replace_number(&mut rng, &mut s);
            assert!(s.starts_with(b"port ") && s.ends_with(b";"));
            seen_big |= s == b"port 18446744073709551616;";
        }
        assert!(seen_big);
    }
}
