//! The fuzz targets' committed corpora (`fuzz/corpus/<target>/`), replayed on stable
//! through the same entry points `cargo fuzz` drives (`ferry::fuzz_targets`): every input
//! that ever found new coverage still runs to completion, with no panic.
#![cfg(test)]

use std::path::Path;

type Target = fn(&[u8]);

const TARGETS: &[(&str, Target)] = &[
    ("token", ferry::fuzz_targets::token),
    ("form", ferry::fuzz_targets::form),
    ("config", ferry::fuzz_targets::config),
    ("packed", ferry::fuzz_targets::packed),
    ("audit", ferry::fuzz_targets::audit),
];

#[test]
fn every_corpus_input_runs_without_a_panic() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (name, target) in TARGETS {
        let dir = root.join(name);
        let mut inputs = 0;
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_file() {
                target(&std::fs::read(&path)?);
                inputs += 1;
            }
        }
        assert!(inputs > 0, "{}: no corpus", dir.display());
    }
    Ok(())
}
