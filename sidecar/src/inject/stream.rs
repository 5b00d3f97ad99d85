//! `sidemount inject`: YAML streams from files or stdin through injection to
//! stdout, or a KRM ResourceList through the function; warnings and problems
//! on stderr, one line each, prefixed `sidemount inject:`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use super::krm;
use super::manifest::{self, ManifestError};
use super::Config;
use crate::exit;

/// Why `sidemount inject` failed; what went wrong is already on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// An input file or the function config cannot be read.
    NoInput,
    /// An input is not UTF-8 or YAML, or an object cannot be injected.
    Invalid,
    /// The output cannot be written.
    Io,
}

impl Failure {
    pub fn exit_code(self) -> u8 {
        match self {
            Failure::NoInput => exit::NO_INPUT,
            Failure::Invalid => exit::INVALID,
            Failure::Io => exit::IO,
        }
    }
}

/// Injects every file (`-` is stdin; stdin when none is given) and writes the
/// result to stdout. `base` comes from the settings; the function config, then
/// the flags, override it: the most explicit wins.
pub fn run(
    files: &[PathBuf],
    mut base: Config,
    function_config: Option<&Path>,
    flags: &krm::Overrides,
) -> Result<(), Failure> {
    if let Some(path) = function_config {
        let text = std::fs::read_to_string(path).map_err(|err| {
            eprintln!("sidemount inject: cannot read {}: {err}", path.display());
            Failure::NoInput
        })?;
        match krm::parse_function_config(&text) {
            Ok(overrides) => overrides.apply(&mut base),
            Err(err) => {
                eprintln!("sidemount inject: {}: {err}", path.display());
                return Err(Failure::Invalid);
            }
        }
    }
    let stdin = [PathBuf::from("-")];
    let files = if files.is_empty() { &stdin[..] } else { files };
    let mut config = base.clone();
    flags.apply(&mut config);
    let mut output = String::new();
    let mut failed = false;
    for file in files {
        let mut bytes = Vec::new();
        let read = if file.as_os_str() == "-" {
            std::io::stdin().read_to_end(&mut bytes).map(|_| ())
        } else {
            std::fs::read(file).map(|b| bytes = b)
        };
        if let Err(err) = read {
            eprintln!("sidemount inject: cannot read {}: {err}", file.display());
            return Err(Failure::NoInput);
        }
        let origin = if file.as_os_str() == "-" { "stdin".to_string() } else { file.display().to_string() };
        let text = match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(err) => {
                let offset = err.utf8_error().valid_up_to();
                eprintln!("sidemount inject: {origin}: not UTF-8 text: the byte at offset {offset} is not UTF-8; save it as UTF-8");
                return Err(Failure::Invalid);
            }
        };
        // A KRM function's input: the list goes back with its results, even when it failed.
        if let Some(list) = krm::resource_list(&text) {
            match krm::process(list, &base, flags) {
                Ok(processed) => {
                    processed.warnings.iter().for_each(|w| eprintln!("sidemount inject: warning: {w}"));
                    processed.errors.iter().for_each(|e| eprintln!("sidemount inject: {origin}: {e}"));
                    failed |= !processed.errors.is_empty();
                    if !output.is_empty() {
                        output.push_str("---\n");
                    }
                    output.push_str(&processed.output);
                }
                Err(err) => {
                    eprintln!("sidemount inject: {origin}: cannot write the ResourceList as YAML: {err}");
                    return Err(Failure::Io);
                }
            }
            continue;
        }
        match manifest::inject_stream(&text, &config) {
            Ok(injected) => {
                injected.warnings.iter().for_each(|w| eprintln!("sidemount inject: warning: {w}"));
                if !output.is_empty() && !injected.output.is_empty() {
                    if !output.ends_with('\n') {
                        output.push('\n');
                    }
                    output.push_str("---\n");
                }
                output.push_str(&injected.output);
            }
            Err(err) => {
                err.to_string().lines().for_each(|line| eprintln!("sidemount inject: {origin}: {line}"));
                return Err(match err {
                    ManifestError::Write { .. } => Failure::Io,
                    ManifestError::Parse { .. } | ManifestError::Invalid(_) => Failure::Invalid,
                });
            }
        }
    }
    let mut stdout = std::io::stdout().lock();
    if let Err(err) = stdout.write_all(output.as_bytes()).and_then(|()| stdout.flush()) {
        eprintln!("sidemount inject: cannot write the output: {err}");
        return Err(Failure::Io);
    }
    if failed {
        return Err(Failure::Invalid);
    }
    Ok(())
}
