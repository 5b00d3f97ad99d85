//! `sidemount check`: spec files read and validated together, as the
//! supervisor would load them.

use std::path::PathBuf;

use super::{load, read_file, Invalid, Problem};

/// Reads and validates `files` together: the number of volumes, or every
/// problem, those of reading first.
pub fn check(files: &[PathBuf]) -> Result<usize, Vec<Problem>> {
    let mut sources = Vec::new();
    let mut problems = Vec::new();
    for file in files {
        match read_file(file) {
            Ok(source) => sources.push(source),
            Err(problem) => problems.push(problem),
        }
    }
    match load(&sources) {
        Ok(volumes) if problems.is_empty() => Ok(volumes.len()),
        Ok(_) => Err(problems),
        Err(Invalid(found)) => {
            problems.extend(found);
            Err(problems)
        }
    }
}
