//! Finding and reading spec text: the config file or directory (a ConfigMap
//! mid-swap included) and the inline `SIDEMOUNT_VOLUMES`, within the size limit.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::{Invalid, Problem, SpecText, MAX_SPEC_BYTES};

/// What a missing or empty spec file means to [`read_sources`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// At start, and while `SIDEMOUNT_CONFIG` has never existed: a missing
    /// config path or an empty file is no spec at all (zero volumes).
    Start,
    /// Once the spec was there: a config path that is missing, a file that is
    /// empty, is a write caught half-way (an editor's rename-and-write, a
    /// ConfigMap's `..data` swap), not a wish to remove every volume.
    Reload,
}

/// Reads the spec sources named by the settings: the config file, or every
/// `*.yaml`/`*.yml`/`*.json` in the config directory (sorted), then the inline
/// spec. A spec file named there that cannot be read (a dangling link) is a
/// problem; a missing config path or an empty file is one only on [`Reading::Reload`].
pub fn read_sources(config: &Path, inline: Option<&str>, reading: Reading) -> Result<Vec<SpecText>, Invalid> {
    let mut sources = Vec::new();
    let mut problems = Vec::new();
    let problem =
        |path: &Path, message: String| Problem { origin: path.display().to_string(), field: "volumes".into(), message };
    let read = |path: &Path, problems: &mut Vec<Problem>| match read_file(path) {
        Ok(source) if reading == Reading::Reload && source.text.trim().is_empty() => {
            problems.push(problem(
                path,
                "the spec file is empty (a write may be under way); the running volumes stay; \
                 write `volumes: []` to remove them all"
                    .into(),
            ));
            None
        }
        Ok(source) => Some(source),
        Err(found) => {
            problems.push(found);
            None
        }
    };
    match std::fs::metadata(config) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && reading == Reading::Start => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => problems.push(problem(
            config,
            "SIDEMOUNT_CONFIG is missing (a write may be under way); the running volumes stay; \
             write `volumes: []` to it to remove them all"
                .into(),
        )),
        Err(e) => problems.push(problem(config, format!("cannot read SIDEMOUNT_CONFIG: {e}"))),
        Ok(meta) if meta.is_dir() => {
            let mut files: BTreeSet<PathBuf> = BTreeSet::new();
            match std::fs::read_dir(config) {
                Ok(entries) => {
                    for entry in entries.flatten() {
                        let path = entry.path();
                        let name = entry.file_name();
                        let name = name.to_string_lossy();
                        // Kubernetes ConfigMap volumes keep their data in `..data/` and
                        // link the visible names to it; hidden names are its bookkeeping.
                        if name.starts_with('.') {
                            continue;
                        }
                        let spec_ext =
                            matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"));
                        // A dangling link is a spec file whose target is away (mid-swap):
                        // read, it fails and says so; skipped, its volumes would go.
                        if spec_ext && std::fs::metadata(&path).map_or(true, |m| m.is_file()) {
                            files.insert(path);
                        }
                    }
                }
                Err(e) => problems.push(problem(config, format!("cannot list the spec directory: {e}"))),
            }
            sources.extend(files.iter().filter_map(|p| read(p, &mut problems)));
        }
        Ok(_) => sources.extend(read(config, &mut problems)),
    }
    if let Some(text) = inline {
        sources.push(SpecText { origin: "SIDEMOUNT_VOLUMES".into(), text: text.to_string() });
    }
    if problems.is_empty() {
        Ok(sources)
    } else {
        Err(Invalid(problems))
    }
}

/// Reads one spec file: at most [`MAX_SPEC_BYTES`] of UTF-8 text. A larger
/// file is refused without reading it all, and text that is not UTF-8 is named
/// by the offset of its first bad byte.
pub fn read_file(path: &Path) -> Result<SpecText, Problem> {
    use std::io::Read;
    let origin = path.display().to_string();
    let problem = |message: String| Problem { origin: origin.clone(), field: "volumes".into(), message };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(MAX_SPEC_BYTES as u64 + 1).read_to_end(&mut bytes))
        .map_err(|e| problem(format!("cannot read the spec file: {e}")))?;
    if bytes.len() > MAX_SPEC_BYTES {
        return Err(problem(format!(
            "the spec file is larger than the limit of {MAX_SPEC_BYTES} bytes: split it into several files in a directory"
        )));
    }
    match String::from_utf8(bytes) {
        Ok(text) => Ok(SpecText { origin, text }),
        Err(e) => Err(problem(format!(
            "the spec file is not UTF-8 text: the byte at offset {} is not UTF-8; save it as UTF-8",
            e.utf8_error().valid_up_to()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::load;

    #[test]
    fn reads_a_spec_file_within_the_limits() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("latin1.yaml");
        std::fs::write(&bad, b"- {name: caf\xe9, type: zfs, dataset: p/a}").unwrap();
        let problem = read_file(&bad).unwrap_err();
        assert_eq!(problem.origin, bad.display().to_string());
        assert!(problem.message.contains("not UTF-8") && problem.message.contains("offset 12"), "{problem}");
        let big = dir.path().join("big.yaml");
        std::fs::write(&big, vec![b'#'; MAX_SPEC_BYTES + 1]).unwrap();
        assert!(read_file(&big).unwrap_err().message.contains("larger than the limit"));
        // A directory with a bad file reports it and reads nothing from it.
        let err = read_sources(dir.path(), None, Reading::Start).unwrap_err();
        assert_eq!(err.0.len(), 2, "{err}");
    }

    #[test]
    fn reads_a_directory_of_specs_in_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.yml"), "- {name: b, type: zfs, dataset: p/b}").unwrap();
        std::fs::write(dir.path().join("a.yaml"), "- {name: a, type: zfs, dataset: p/a}").unwrap();
        std::fs::write(dir.path().join("c.json"), r#"[{"name":"c","type":"zfs","dataset":"p/c"}]"#).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a spec").unwrap();
        let sources = read_sources(dir.path(), Some("- {name: d, type: zfs, dataset: p/d}"), Reading::Start).unwrap();
        let names: Vec<_> = load(&sources).unwrap().into_iter().map(|v| v.name).collect();
        assert_eq!(names, ["a", "b", "c", "d"]);
        assert!(read_sources(&dir.path().join("missing.yaml"), None, Reading::Start).unwrap().is_empty());
    }

    #[test]
    fn a_spec_missing_for_a_moment_on_reload_is_refused_not_empty() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("volumes.yaml");
        // At start: the contract's "zero volumes, ready at once".
        assert!(read_sources(&missing, None, Reading::Start).unwrap().is_empty());
        let err = read_sources(&missing, Some("[]"), Reading::Reload).unwrap_err();
        assert!(err.to_string().contains("SIDEMOUNT_CONFIG is missing"), "{err}");
        assert!(err.to_string().contains("volumes: []"), "names the way to remove every volume: {err}");

        // Empty: truncated, not yet written.
        std::fs::write(&missing, "  \n").unwrap();
        assert!(read_sources(&missing, None, Reading::Start).unwrap().iter().all(|s| s.text.trim().is_empty()));
        let err = read_sources(&missing, None, Reading::Reload).unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
        std::fs::write(&missing, "volumes: []\n").unwrap();
        assert_eq!(read_sources(&missing, None, Reading::Reload).unwrap().len(), 1);

        // A ConfigMap directory mid-swap: the visible name links into `..data`, which is away.
        let cm = dir.path().join("cm");
        std::fs::create_dir(&cm).unwrap();
        std::os::unix::fs::symlink("..data/volumes.yaml", cm.join("volumes.yaml")).unwrap();
        for reading in [Reading::Start, Reading::Reload] {
            let err = read_sources(&cm, None, reading).unwrap_err();
            assert!(err.0[0].origin.ends_with("cm/volumes.yaml"), "{err}");
            assert!(err.to_string().contains("cannot read the spec file"), "{err}");
        }
        std::fs::create_dir(cm.join("..v1")).unwrap();
        std::fs::write(cm.join("..v1/volumes.yaml"), "- {name: a, type: zfs, dataset: p/a}").unwrap();
        std::os::unix::fs::symlink("..v1", cm.join("..data")).unwrap();
        let sources = read_sources(&cm, None, Reading::Reload).unwrap();
        assert_eq!(load(&sources).unwrap()[0].name, "a");
        // A directory with a spec's name is still no spec.
        std::fs::create_dir(cm.join("sub.yaml")).unwrap();
        assert_eq!(read_sources(&cm, None, Reading::Reload).unwrap().len(), 1);
        // The directory itself gone.
        std::fs::remove_file(cm.join("..data")).unwrap();
        assert!(read_sources(&dir.path().join("gone"), None, Reading::Reload).is_err());
    }
}
