//! Fast replay of the committed fuzz corpus of `segment_recovery` (and of every crash the fuzzer
//! found, kept under `fuzz/regressions/`) through the same check the fuzz target runs
//! (`fuzz_checks`). This is what CI runs instead of the fuzzer; it takes a few seconds. A missing
//! or empty corpus fails the test rather than passing vacuously. How to fuzz: `docs/fuzzing.md`.

mod fuzz_checks;

use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

/// `fuzz/<kind>/<target>/` of the repository.
fn fuzz_dir(kind: &str, target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz")
        .join(kind)
        .join(target)
}

/// Files of `dir`, sorted; an absent directory has none.
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("read corpus dir").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs `check` on every corpus and regression input of `target`, then fails listing each input
/// that failed.
fn replay(target: &str, check: fn(&[u8])) {
    let corpus = files(&fuzz_dir("corpus", target));
    assert!(
        !corpus.is_empty(),
        "the corpus of {target} is missing or empty: expected files in {}",
        fuzz_dir("corpus", target).display()
    );
    let regressions = files(&fuzz_dir("regressions", target));
    let mut failed = Vec::new();
    for path in corpus.iter().chain(&regressions) {
        let data = fs::read(path).expect("read corpus file");
        if catch_unwind(AssertUnwindSafe(|| check(&data))).is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} inputs of {target} fail:\n{}",
        failed.len(),
        corpus.len() + regressions.len(),
        failed.join("\n")
    );
}

#[test]
fn segment_recovery_corpus() {
    replay("segment_recovery", fuzz_checks::segment_recovery);
}

/// Writes the seed inputs of the corpus (no damage under every flag, weak mode included, and one
/// damage of each kind): run once before the first fuzzing with
/// `cargo test -p strom-storage --test fuzz_corpus -- --ignored write_seeds`.
#[test]
#[ignore = "writes the seed corpus; run by hand"]
fn write_seeds() {
    let dir = fuzz_dir("corpus", "segment_recovery");
    fs::create_dir_all(&dir).unwrap();
    let mut seeds: Vec<(String, Vec<u8>)> = (0..18u8)
        .map(|flags| (format!("intact-{flags:02}"), vec![flags]))
        .collect();
    // [kind, file, position hi, position lo, bytes...]: kind & 3 is overwrite, flip, truncate,
    // append; overwrite and append take (kind >> 2) % 16 + 1 bytes, flip one.
    for (name, damage) in [
        ("overwrite", vec![3 << 2, 1, 0, 70, 1, 2, 3, 4]),
        ("flip", vec![1, 4, 1, 0, 0x10]),
        ("truncate", vec![2, 7, 0, 200]),
        (
            "append",
            vec![3 | (7 << 2), 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ),
    ] {
        for flags in [0u8, 1] {
            seeds.push((format!("{name}-{flags}"), [&[flags][..], &damage].concat()));
        }
    }
    for (name, data) in seeds {
        fuzz_checks::segment_recovery(&data);
        fs::write(dir.join(format!("seed-{name}")), data).unwrap();
    }
}
