//! `spec::load` on any text: never a panic, never slower than the stated bound,
//! never a text over the size limit read; and the nesting scan that guards
//! libyaml never measures less than libyaml nests.

#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use sidemount::spec::{self, SpecText};
use sidemount::yaml;

/// The worst text within the limits parses in well under a second, even with
/// the fuzzer's instrumentation; before the limits, texts like it took minutes.
const BOUND: Duration = Duration::from_secs(2);

fn depth(value: &serde_yaml_ng::Value) -> usize {
    match value {
        serde_yaml_ng::Value::Sequence(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        serde_yaml_ng::Value::Mapping(map) => 1 + map.iter().map(|(k, v)| depth(k).max(depth(v))).max().unwrap_or(0),
        serde_yaml_ng::Value::Tagged(tagged) => depth(&tagged.value),
        _ => 0,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let started = Instant::now();
    let loaded = spec::load(&[SpecText { origin: "fuzz".into(), text: text.into() }]);
    let took = started.elapsed();
    assert!(took < BOUND, "spec::load took {took:?} on {} bytes", text.len());
    match &loaded {
        Ok(volumes) => {
            assert!(text.len() <= spec::MAX_SPEC_BYTES, "a spec over the size limit was read");
            assert!(volumes.iter().all(|v| spec::check_dns_label(&v.name).is_ok()));
        }
        Err(invalid) => assert!(invalid.0.iter().all(|p| p.origin == "fuzz" && !p.field.is_empty())),
    }
    // Aliases can nest a value deeper than its text does; small texts only, so
    // that the unguarded parse here stays cheap.
    if text.len() <= 4096 && !text.contains('*') {
        if let Ok(value) = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text) {
            let scanned = yaml::scan(text, usize::MAX);
            assert!(depth(&value) <= scanned.depth, "libyaml nests {} deep, the scan saw {scanned:?}", depth(&value));
        }
    }
});
